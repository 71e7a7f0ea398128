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
}

// Change kinds.
const (
	Added    = "added"
	Modified = "modified"
	Deleted  = "deleted"
	ModeOnly = "mode"
	Linked   = "linked"
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
	i, j := 0, 0
	for i < len(ot.Entries) || j < len(nt.Entries) {
		switch {
		case j >= len(nt.Entries) || (i < len(ot.Entries) && ot.Entries[i].Path < nt.Entries[j].Path):
			o := &ot.Entries[i]
			c := Change{Workspace: nt.Root, Path: o.Path, Change: Deleted, Kind: o.Kind.String()}
			if r := RiskyPath(o.Path); r != "" {
				c.Risky, c.Reason = true, r
			}
			out = append(out, c)
			i++
		case i >= len(ot.Entries) || nt.Entries[j].Path < ot.Entries[i].Path:
			if c, ok := diffEntry(nt.Root, nil, &nt.Entries[j]); ok {
				out = append(out, c)
			}
			j++
		default:
			if c, ok := diffEntry(nt.Root, &ot.Entries[i], &nt.Entries[j]); ok {
				out = append(out, c)
			}
			i++
			j++
		}
	}
	out = append(out, compareSummaries(ot, nt)...)
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

// diffEntry compares one path; o is nil for an added entry.
func diffEntry(root string, o, n *Entry) (Change, bool) {
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
	if r := RiskyPath(n.Path); r != "" {
		reasons = append(reasons, r)
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
	if newlyLinked {
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
	if o.Size != n.Size || o.MTime != n.MTime || o.Ino != n.Ino || o.Dev != n.Dev {
		return true
	}
	// A changed ctime with the same mode and links means the content was
	// written and the mtime set back.
	return o.CTime != n.CTime && o.Mode == n.Mode && o.Nlink == n.Nlink
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
