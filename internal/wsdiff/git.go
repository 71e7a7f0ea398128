package wsdiff

import (
	"encoding/hex"
)

// Git modes of tree entries, as git prints them in octal.
const (
	GitFile       = 0o100644
	GitExecutable = 0o100755
	GitSymlink    = 0o120000
	GitSubmodule  = 0o160000
	GitDir        = 0o040000
)

// GitEntry is one path git reports changed between two trees, or between
// a tree and a work tree (a clone mode sandbox's clone, see
// internal/clone): the sides' git modes (0 when absent) and object names
// ("" when unknown: a work tree file git did not hash), and the new
// symlink target when known.
type GitEntry struct {
	Path             string
	OldMode, NewMode uint32
	OldID, NewID     string
	// Changed reports a content change when the ids cannot tell (a work
	// tree file).
	Changed bool
	// OldTarget and Target are the symlink targets of each side.
	OldTarget, Target string
}

// FromGit turns e into a Change of the workspace at root, risky by the
// same rules as Compare (the path table, folders of risky paths,
// symlinks out of the workspace or into risky paths, files newly made
// executable). A submodule is kind "submodule".
func FromGit(root string, e GitEntry) (Change, bool) {
	cx := &treeCtx{root: root, old: &Tree{Root: root}, new: &Tree{Root: root}}
	if e.NewMode == 0 {
		if e.OldMode == 0 {
			return Change{}, false
		}
		o := gitEntry(e.Path, e.OldMode, e.OldID, e.OldTarget)
		c := Change{Workspace: root, Path: e.Path, Change: Deleted, Kind: gitKind(e.OldMode, o.Kind)}
		if r := cx.riskyPath(e.Path); r != "" {
			c.Risky, c.Reason = true, r
		}
		return c, true
	}
	n := gitEntry(e.Path, e.NewMode, e.NewID, e.Target)
	var o *Entry
	if e.OldMode != 0 {
		oe := gitEntry(e.Path, e.OldMode, e.OldID, e.OldTarget)
		o = &oe
		if e.Changed || e.OldID == "" || e.NewID == "" {
			// Force a content change: the hashes differ.
			o.Hash[31] ^= 1
		}
	}
	c, ok := cx.diffEntry(o, &n)
	if ok {
		c.Kind = gitKind(e.NewMode, n.Kind)
	}
	return c, ok
}

// gitEntry is the snapshot entry a git tree entry stands for; a file's
// Hash is its object name, so contentChanged compares ids.
func gitEntry(p string, mode uint32, id, target string) Entry {
	e := Entry{Path: p, Hashed: true}
	// A work tree's untracked file has its real mode (set-id bits, a
	// fifo...); git's trees have the five modes above.
	switch mode &^ 0o7777 {
	case GitSymlink:
		e.Kind, e.Mode, e.Target = KindSymlink, 0o777, target
	case GitDir, GitSubmodule:
		e.Kind, e.Mode = KindDir, 0o755
	case 0o100000:
		e.Kind, e.Mode = KindFile, mode&0o7777
	default:
		e.Kind, e.Mode = KindSpecial, mode&0o7777
	}
	if b, err := hex.DecodeString(id); err == nil {
		copy(e.Hash[:], b)
	}
	return e
}

// gitKind is the Change kind of a git mode.
func gitKind(mode uint32, k Kind) string {
	if mode == GitSubmodule {
		return "submodule"
	}
	return k.String()
}
