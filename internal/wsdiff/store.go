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
)

// Record snapshots roots into dir as StartFile, keeping copies of flagged
// files in dir/files, and also as CreateFile when there is none yet. On
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
	s, err := Take(roots, opt)
	if err == nil {
		err = Save(start, s)
	}
	if err != nil {
		os.Remove(start)
		return nil, err
	}
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
