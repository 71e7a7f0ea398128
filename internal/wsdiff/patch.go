package wsdiff

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/go-git/go-billy/v5/osfs"
	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/pmezard/go-difflib/difflib"
)

// MaxPatchBytes caps the size of a file Patch diffs.
const MaxPatchBytes = 1 << 20

// Patch writes a unified diff of the text files among changes. The base
// of a file is the copy kept when base was taken (flagged files, git hooks
// included), else its content at the workspace repository's HEAD (read
// with go-git: no git program runs, so no hook, filter or fsmonitor of the
// agent-controlled repository does), else nothing: added files diff
// against an empty file, and the others say that no base was kept. Binary
// files say so. Current content is read through an os.Root, so no symlink
// leads outside the workspace.
func Patch(w io.Writer, base *Snapshot, filesDir string, changes []Change) error {
	heads := map[string]*object.Tree{}
	roots := map[string]*os.Root{}
	defer func() {
		for _, r := range roots {
			if r != nil {
				r.Close()
			}
		}
	}()
	for _, c := range changes {
		if c.Kind == "summary" || c.Kind == "dir" {
			continue
		}
		if c.Kind == "symlink" || c.Kind == "special" {
			fmt.Fprintf(w, "%s %s: %s", c.Change, c.Kind, c.Path)
			if c.Target != "" {
				fmt.Fprintf(w, " -> %s", c.Target)
			}
			fmt.Fprintln(w)
			continue
		}
		if c.Change == ModeOnly || c.Change == Linked {
			fmt.Fprintf(w, "%s %s: %s %s -> %s\n", c.Change, c.Kind, c.Path, c.OldMode, c.Mode)
			continue
		}
		var old []byte
		from := "/dev/null"
		haveBase := false
		if t := base.Tree(c.Workspace); t != nil {
			if e := t.Lookup(c.Path); e != nil && e.Kind == KindFile && e.Copied {
				if data, err := ReadCopy(filesDir, e.HashHex()); err == nil {
					old, haveBase, from = data, true, "a/"+c.Path+"\t(kept at start)"
				}
			}
		}
		if !haveBase && c.Change != Added && !strings.HasPrefix(c.Path, ".git/") {
			ht, ok := heads[c.Workspace]
			if !ok {
				ht = headTree(c.Workspace)
				heads[c.Workspace] = ht
			}
			if data, ok := blobAt(ht, c.Path); ok {
				old, haveBase, from = data, true, "a/"+c.Path+"\t(git HEAD)"
			}
		}
		var cur []byte
		to := "/dev/null"
		if c.Change != Deleted {
			r, ok := roots[c.Workspace]
			if !ok {
				r, _ = os.OpenRoot(c.Workspace)
				roots[c.Workspace] = r
			}
			data, err := readRooted(r, c.Path)
			if err != nil {
				fmt.Fprintf(w, "%s %s: %s (cannot read: %v)\n", c.Change, c.Kind, c.Path, err)
				continue
			}
			cur, to = data, "b/"+c.Path
		}
		if !haveBase && c.Change != Added {
			fmt.Fprintf(w, "%s file: %s (no copy kept at start and not in git HEAD)\n", c.Change, c.Path)
			continue
		}
		if len(old) > MaxPatchBytes || len(cur) > MaxPatchBytes {
			fmt.Fprintf(w, "%s file: %s (larger than %d bytes)\n", c.Change, c.Path, MaxPatchBytes)
			continue
		}
		if isBinary(old) || isBinary(cur) {
			fmt.Fprintf(w, "%s file: %s (binary)\n", c.Change, c.Path)
			continue
		}
		text, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
			A: difflib.SplitLines(string(old)), B: difflib.SplitLines(string(cur)),
			FromFile: from, ToFile: to, Context: 3,
		})
		if err != nil {
			return err
		}
		if text == "" {
			fmt.Fprintf(w, "%s file: %s (same text as the base)\n", c.Change, c.Path)
			continue
		}
		io.WriteString(w, text)
	}
	return nil
}

func isBinary(b []byte) bool {
	return bytes.IndexByte(b[:min(len(b), 8000)], 0) >= 0
}

func readRooted(r *os.Root, rel string) ([]byte, error) {
	if r == nil {
		return nil, errors.New("workspace not readable")
	}
	fi, err := r.Lstat(filepath.FromSlash(rel))
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if fi.Size() > MaxPatchBytes {
		return make([]byte, fi.Size()), nil // only the size matters
	}
	f, err := r.OpenFile(filepath.FromSlash(rel), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxPatchBytes+1))
}

// headTree opens the git repository at root/.git (a real folder, read
// through a billy filesystem bound to it, so links in it lead nowhere else)
// and returns HEAD's tree, or nil.
func headTree(root string) *object.Tree {
	gitDir := filepath.Join(root, ".git")
	if fi, err := os.Lstat(gitDir); err != nil || !fi.IsDir() {
		return nil
	}
	st := filesystem.NewStorage(osfs.New(gitDir, osfs.WithBoundOS()), cache.NewObjectLRUDefault())
	repo, err := git.Open(st, nil)
	if err != nil {
		return nil
	}
	ref, err := repo.Head()
	if err != nil {
		return nil
	}
	commit, err := repo.CommitObject(ref.Hash())
	if err != nil {
		return nil
	}
	t, err := commit.Tree()
	if err != nil {
		return nil
	}
	return t
}

func blobAt(t *object.Tree, rel string) ([]byte, bool) {
	if t == nil {
		return nil, false
	}
	f, err := t.File(rel)
	if err != nil || f.Size > MaxPatchBytes {
		return nil, false
	}
	r, err := f.Reader()
	if err != nil {
		return nil, false
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, MaxPatchBytes+1))
	return data, err == nil
}
