package wsdiff

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Files in a sandbox's wsdiff folder (docs/state-layout.md).
const (
	StartFile  = "start.snap"  // taken at the last VM start
	CreateFile = "create.snap" // taken at the first start, kept
	FilesDir   = "files"       // copies of flagged files, named by sha256
	// SummaryFile is the tree as the last printed summary saw it.
	SummaryFile = "summary.snap"
	// PrevFile is, after a start, the tree as last reviewed before it: the
	// last summary's snapshot if one was printed since the start before,
	// else that start's. Compared with StartFile, it lists what changed
	// unreviewed (after the summary, while the VM idled or on the host)
	// and became part of this start's baseline.
	PrevFile = "prev.snap"
)

// MarkReviewed records now (a snapshot taken by Since for a summary that
// was printed) as the state the user last saw.
func MarkReviewed(dir string, now *Snapshot) error {
	return Save(filepath.Join(dir, SummaryFile), now)
}

// Unreviewed lists what changed between PrevFile and StartFile: changes
// absorbed into the current baseline that no summary showed.
func Unreviewed(dir string) ([]Change, error) {
	prev, err := Load(filepath.Join(dir, PrevFile))
	if err != nil {
		return nil, err
	}
	start, err := Load(filepath.Join(dir, StartFile))
	if err != nil {
		return nil, err
	}
	return Compare(prev, start), nil
}

// lastReviewed is the snapshot of the tree as last reviewed: the last
// summary's if it is newer than the last start's, else the last start's.
func lastReviewed(dir string) *Snapshot {
	start, err := Load(filepath.Join(dir, StartFile))
	if err != nil {
		start = nil
	}
	if sum, err := Load(filepath.Join(dir, SummaryFile)); err == nil && (start == nil || !sum.Taken.Before(start.Taken)) {
		return sum
	}
	return start
}

// Record snapshots roots into dir as StartFile, keeping copies of flagged
// files in dir/files, and also as CreateFile when there is none yet. The
// tree as last reviewed (see PrevFile) is kept as PrevFile. On
// failure it removes StartFile, so no stale baseline is compared later.
// Copies that neither snapshot refers to are removed.
func Record(dir string, roots []string) (*Snapshot, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	start := filepath.Join(dir, StartFile)
	files := filepath.Join(dir, FilesDir)
	create := filepath.Join(dir, CreateFile)
	// Ignore rules and summarised folders come from the create snapshot:
	// a .gitignore the guest wrote in an earlier session does not hide
	// anything from this one.
	opt := Options{FilesDir: files, Baseline: true}
	if c, err := Load(create); err == nil {
		opt.Base = c
	}
	last := lastReviewed(dir)
	s, err := Take(roots, opt)
	if err == nil {
		err = Save(start, s)
	}
	if err != nil {
		os.Remove(start)
		return nil, err
	}
	// What changed after the last review is kept for Unreviewed, never
	// silently absorbed into the new baseline.
	prev := filepath.Join(dir, PrevFile)
	if last != nil {
		if err := Save(prev, last); err != nil {
			return nil, err
		}
	} else {
		os.Remove(prev)
	}
	os.Remove(filepath.Join(dir, SummaryFile))
	keep := map[string]bool{}
	mark := func(s *Snapshot) {
		for _, t := range s.Trees {
			for i := range t.Entries {
				if t.Entries[i].Copied {
					keep[t.Entries[i].HashHex()] = true
				}
			}
		}
	}
	mark(s)
	if c, err := Load(create); err == nil {
		mark(c)
	} else if errors.Is(err, fs.ErrNotExist) {
		if err := Save(create, s); err != nil {
			return nil, err
		}
	}
	ents, _ := os.ReadDir(files)
	for _, e := range ents {
		if !keep[e.Name()] || strings.HasPrefix(e.Name(), ".tmp-") {
			os.Remove(filepath.Join(files, e.Name()))
		}
	}
	return s, nil
}

// Since takes a snapshot of the trees of base now, with base's ignore
// rules, and compares.
func Since(base *Snapshot) (*Snapshot, []Change, error) {
	roots := make([]string, 0, len(base.Trees))
	for _, t := range base.Trees {
		roots = append(roots, t.Root)
	}
	now, err := Take(roots, Options{Base: base})
	if err != nil {
		return nil, nil, err
	}
	return now, Compare(base, now), nil
}
