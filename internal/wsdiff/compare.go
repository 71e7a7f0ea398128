package wsdiff

import (
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Change is one difference between two snapshots. The JSON field names are
// stable: scripts read them from `sbx diff --json`.
type Change struct {
	// Workspace is the workspace's absolute path; Path is relative to it.
	Workspace string `json:"workspace"`
	Path      string `json:"path"`
	// Change is added, modified, deleted, mode (permissions only) or
	// linked (a hard link to a file outside the workspace appeared).
	Change string `json:"change"`
	// Kind is file, dir, symlink, special or summary (a summarised
	// folder, see Summary).
	Kind   string `json:"kind"`
	Risky  bool   `json:"risky"`
	Reason string `json:"reason,omitempty"`
	// Mode and OldMode are the permission bits in octal, when they matter.
	Mode    string `json:"mode,omitempty"`
	OldMode string `json:"oldMode,omitempty"`
	// Target is a symlink's target; Outside reports a symlink target or
	// hard link that leaves the workspace.
	Target  string `json:"target,omitempty"`
	Outside bool   `json:"outside,omitempty"`
	Size    int64  `json:"size,omitempty"`
	// For summaries: why the folder is summarised and its file counts.
	Summary  string `json:"summary,omitempty"`
	Files    int64  `json:"files,omitempty"`
	OldFiles int64  `json:"oldFiles,omitempty"`
	// In clone mode (FromGit): State is committed (on branch Ref, against
	// the host branch it forked from), uncommitted (the clone's work tree
	// and index against its HEAD, on branch Ref) or untracked.
	State string `json:"state,omitempty"`
	Ref   string `json:"ref,omitempty"`
}

// Change kinds.
const (
	Added    = "added"
	Modified = "modified"
	Deleted  = "deleted"
	ModeOnly = "mode"
	Linked   = "linked"
	// Unreadable: a folder the walk could not list (or that is too deep):
	// its content is unknown. Always risky.
	Unreadable = "unreadable"
)

// Compare lists what changed from old to new, risky changes first, then by
// workspace and path. Trees are matched by root; a workspace missing from
// old is skipped (nothing to compare it with).
func Compare(old, new *Snapshot) []Change {
	var out []Change
	for _, nt := range new.Trees {
		ot := old.Tree(nt.Root)
		if ot == nil {
			continue
		}
		out = append(out, compareTree(ot, nt)...)
	}
	slices.SortStableFunc(out, func(a, b Change) int {
		if a.Risky != b.Risky {
			if a.Risky {
				return -1
			}
			return 1
		}
		return 0
	})
	return out
}

func compareTree(ot, nt *Tree) []Change {
	var out []Change
	cx := &treeCtx{root: nt.Root, extra: ot.Extra, old: ot, new: nt}
	// A root that could not be opened or listed is one unreadable row:
	// what was below it is unknown, not deleted.
	gone := rootUnread(nt)
	i, j := 0, 0
	for i < len(ot.Entries) || j < len(nt.Entries) {
		switch {
		case j >= len(nt.Entries) || (i < len(ot.Entries) && ot.Entries[i].Path < nt.Entries[j].Path):
			o := &ot.Entries[i]
			if gone {
				i++
				continue
			}
			c := Change{Workspace: nt.Root, Path: o.Path, Change: Deleted, Kind: o.Kind.String()}
			if r := cx.riskyPath(o.Path); r != "" {
				c.Risky, c.Reason = true, r
			} else if o.Kind == KindDir && riskyDir(o.Path) {
				c.Risky, c.Reason = true, reasonFor(ruleRiskyDir)
			}
			out = append(out, c)
			i++
		case i >= len(ot.Entries) || nt.Entries[j].Path < ot.Entries[i].Path:
			if c, ok := cx.diffEntry(nil, &nt.Entries[j]); ok {
				out = append(out, c)
			}
			j++
		default:
			if c, ok := cx.diffEntry(&ot.Entries[i], &nt.Entries[j]); ok {
				out = append(out, c)
			}
			i++
			j++
		}
	}
	if !gone {
		out = append(out, compareSummaries(ot, nt)...)
	}
	for _, u := range nt.Unread {
		out = append(out, Change{Workspace: nt.Root, Path: u.Path, Change: Unreadable, Kind: "dir", Risky: true,
			Reason: u.Why + "; " + reasonFor(ruleUnread)})
	}
	slices.SortStableFunc(out, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return out
}

func compareSummaries(ot, nt *Tree) []Change {
	var out []Change
	old := map[string]*Summary{}
	for i := range ot.Summaries {
		old[ot.Summaries[i].Dir] = &ot.Summaries[i]
	}
	for i := range nt.Summaries {
		n := &nt.Summaries[i]
		c := Change{Workspace: nt.Root, Path: n.Dir, Kind: "summary", Summary: n.Reason, Files: n.Files, Size: n.Bytes}
		o := old[n.Dir]
		delete(old, n.Dir)
		switch {
		case o == nil:
			c.Change = Added
		case o.Sum != n.Sum || o.Files != n.Files || o.Bytes != n.Bytes || o.Dirs != n.Dirs:
			c.Change, c.OldFiles = Modified, o.Files
		default:
			continue
		}
		out = append(out, c)
	}
	for _, o := range old {
		out = append(out, Change{Workspace: nt.Root, Path: o.Dir, Change: Deleted, Kind: "summary", Summary: o.Reason, OldFiles: o.Files})
	}
	return out
}

func octal(m uint32) string { return fmt.Sprintf("%04o", m) }

// treeCtx is what comparing one workspace needs besides two entries.
type treeCtx struct {
	root     string
	extra    []string // risky paths named by the baseline .git/config
	old, new *Tree
}

// riskyPath is the reason a change at rel is risky by path: a table row,
// or a path the baseline .git/config names.
func (cx *treeCtx) riskyPath(rel string) string {
	if r := RiskyPath(rel); r != "" {
		return r
	}
	if underExtra(cx.extra, rel) {
		return reasonFor(ruleConfigPath)
	}
	return ""
}

// intoRisky reports whether a symlink at rel with target resolves (as
// written, inside the workspace) to a risky path, a folder of them, or a
// summarised folder.
func (cx *treeCtx) intoRisky(rel, target string) bool {
	var p string
	if filepath.IsAbs(target) {
		p = filepath.Clean(target)
	} else {
		p = filepath.Join(cx.root, filepath.FromSlash(path.Dir(rel)), target)
	}
	r, err := filepath.Rel(cx.root, p)
	if err != nil || r == "." || r == ".." || strings.HasPrefix(r, "../") {
		return false
	}
	r = filepath.ToSlash(r)
	if cx.riskyPath(r) != "" || riskyDir(r) || nearExtra(cx.extra, r) {
		return true
	}
	for _, t := range []*Tree{cx.old, cx.new} {
		for _, s := range t.Summaries {
			if r == s.Dir || strings.HasPrefix(r, s.Dir+"/") {
				return true
			}
		}
	}
	return false
}

// diffEntry compares one path; o is nil for an added entry.
func (cx *treeCtx) diffEntry(o, n *Entry) (Change, bool) {
	root := cx.root
	c := Change{Workspace: root, Path: n.Path, Kind: n.Kind.String(), Mode: octal(n.Mode)}
	if n.Kind == KindFile {
		c.Size = n.Size
	}
	if n.Kind == KindSymlink {
		c.Target = n.Target
		c.Outside = outside(root, n.Path, n.Target)
	}
	var reasons []string
	add := func(key string) { reasons = append(reasons, reasonFor(key)) }
	newlyExec := n.Kind == KindFile && n.Mode&0o111 != 0
	newlySetuid := n.Kind == KindFile && n.Mode&0o6000 != 0
	newlyLinked := n.LinkedOut
	switch {
	case o == nil:
		c.Change = Added
	case o.Kind != n.Kind:
		c.Change = Modified
	default:
		newlyExec = newlyExec && o.Mode&0o111 == 0
		newlySetuid = newlySetuid && (n.Mode&^o.Mode)&0o6000 != 0
		newlyLinked = newlyLinked && !o.LinkedOut
		modeChanged := o.Mode != n.Mode
		if modeChanged {
			c.OldMode = octal(o.Mode)
		}
		switch {
		case contentChanged(o, n):
			c.Change = Modified
		case modeChanged:
			c.Change = ModeOnly
		case newlyLinked:
			c.Change = Linked
		default:
			return c, false
		}
	}
	if r := cx.riskyPath(n.Path); r != "" {
		reasons = append(reasons, r)
	}
	// A folder that holds risky paths (.git/hooks, .claude, .github...)
	// added, replaced by another kind, or replaced by a symlink.
	if (n.Kind != KindFile && riskyDir(n.Path)) || (o != nil && o.Kind == KindDir && n.Kind != KindDir && riskyDir(n.Path)) {
		if o == nil || o.Kind != n.Kind || (n.Kind == KindSymlink && o.Target != n.Target) {
			add(ruleRiskyDir)
		}
	}
	if n.Kind == KindSymlink && (o == nil || o.Kind != KindSymlink || o.Target != n.Target) && cx.intoRisky(n.Path, n.Target) {
		add(ruleSymlinkIn)
	}
	if newlyExec {
		add(ruleExecutable)
	}
	if newlySetuid {
		add(ruleSetuid)
	}
	if c.Outside && (o == nil || o.Kind != KindSymlink || o.Target != n.Target) {
		add(ruleSymlinkOut)
	}
	if newlyLinked || (n.LinkedOut && c.Change == Modified) {
		// A new link out, or a write to a file linked from outside since
		// before: the write reached the file outside too.
		c.Outside = true
		add(ruleHardlink)
	}
	if n.Kind == KindSpecial && (o == nil || o.Kind != KindSpecial) {
		add(ruleSpecial)
	}
	if len(reasons) > 0 {
		c.Risky, c.Reason = true, strings.Join(reasons, "; ")
	}
	return c, true
}

// contentChanged reports a change of content (files) or target (links).
// Folders change only in mode: their times follow their children.
func contentChanged(o, n *Entry) bool {
	switch n.Kind {
	case KindDir:
		return false
	case KindSymlink:
		return o.Target != n.Target
	}
	if o.Hashed && n.Hashed {
		return o.Hash != n.Hash
	}
	// Any ctime change may be a write with the mtime set back: a chmod or
	// a new hard link changes ctime too, and would hide one.
	return o.Size != n.Size || o.MTime != n.MTime || o.CTime != n.CTime || o.Ino != n.Ino || o.Dev != n.Dev
}

// outside reports whether a symlink at rel in root with target leaves root.
// The guest sees the workspace at the same absolute path, so absolute
// targets mean the same in both.
func outside(root, rel, target string) bool {
	var p string
	if filepath.IsAbs(target) {
		p = filepath.Clean(target)
	} else {
		p = filepath.Join(root, filepath.FromSlash(path.Dir(rel)), target)
	}
	return p != root && !strings.HasPrefix(p, root+string(filepath.Separator))
}
