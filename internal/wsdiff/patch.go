package wsdiff

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/format/objfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/pmezard/go-difflib/difflib"

	"github.com/sbx-dev/sbx/internal/safefile"
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
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
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
			fmt.Fprintf(w, "%s %s: %s", c.Change, c.Kind, QuotePath(c.Path))
			if c.Target != "" {
				fmt.Fprintf(w, " -> %s", QuotePath(c.Target))
			}
			fmt.Fprintln(w)
			continue
		}
		if c.Change == ModeOnly || c.Change == Linked {
			fmt.Fprintf(w, "%s %s: %s %s -> %s\n", c.Change, c.Kind, QuotePath(c.Path), c.OldMode, c.Mode)
			continue
		}
		var old []byte
		from := "/dev/null"
		haveBase := false
		if t := base.Tree(c.Workspace); t != nil {
			if e := t.Lookup(c.Path); e != nil && e.Kind == KindFile && e.Copied {
				if data, err := ReadCopy(filesDir, e.HashHex()); err == nil {
					old, haveBase, from = data, true, QuotePath("a/"+c.Path)+"\t(kept at start)"
				}
			}
		}
		if !haveBase && c.Change != Added && !strings.HasPrefix(c.Path, ".git/") {
			ht, ok := heads[c.Workspace]
			if !ok {
				var done func()
				ht, done = commitTree(c.Workspace, base.Tree(c.Workspace).headID())
				closers = append(closers, done)
				heads[c.Workspace] = ht
			}
			if data, ok := blobAt(ht, c.Path); ok {
				old, haveBase, from = data, true, QuotePath("a/"+c.Path)+"\t(git HEAD at start)"
			}
		}
		var cur []byte
		to := "/dev/null"
		if c.Change != Deleted {
			r, ok := roots[c.Workspace]
			if !ok {
				r, _ = openRealRoot(c.Workspace)
				roots[c.Workspace] = r
			}
			data, err := readRooted(r, c.Path)
			if errors.Is(err, errTooLarge) {
				fmt.Fprintf(w, "%s file: %s (too large to show: more than %d bytes)\n", c.Change, QuotePath(c.Path), MaxPatchBytes)
				continue
			}
			if err != nil {
				fmt.Fprintf(w, "%s %s: %s (cannot read: %s)\n", c.Change, c.Kind, QuotePath(c.Path), QuotePath(errText(err)))
				continue
			}
			cur, to = data, QuotePath("b/"+c.Path)
		}
		if !haveBase && c.Change != Added {
			fmt.Fprintf(w, "%s file: %s (no copy kept at start and not in git HEAD)\n", c.Change, QuotePath(c.Path))
			continue
		}
		if len(old) > MaxPatchBytes || len(cur) > MaxPatchBytes {
			fmt.Fprintf(w, "%s file: %s (larger than %d bytes)\n", c.Change, QuotePath(c.Path), MaxPatchBytes)
			continue
		}
		if isBinary(old) || isBinary(cur) {
			fmt.Fprintf(w, "%s file: %s (binary)\n", c.Change, QuotePath(c.Path))
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
			fmt.Fprintf(w, "%s file: %s (same text as the base)\n", c.Change, QuotePath(c.Path))
			continue
		}
		io.WriteString(w, text)
	}
	return nil
}

func isBinary(b []byte) bool {
	return bytes.IndexByte(b[:min(len(b), 8000)], 0) >= 0
}

// errTooLarge says a file is larger than MaxPatchBytes: it is not read.
var errTooLarge = errors.New("too large to show")

// readRooted reads the regular file rel below the workspace root r: no
// symlink at rel is followed, no FIFO blocks, and at most MaxPatchBytes+1
// bytes are read (never a buffer sized by what the guest says).
func readRooted(r *os.Root, rel string) ([]byte, error) {
	if r == nil {
		return nil, errors.New("workspace not readable")
	}
	data, err := safefile.ReadRegular(r, filepath.FromSlash(rel), MaxPatchBytes)
	if errors.Is(err, safefile.ErrTooLarge) {
		return nil, errTooLarge
	}
	return data, err
}

// openStorage opens the object and reference storage of root/.git for
// reading through a gitFS: nothing leads outside the workspace, no FIFO
// blocks, no hook, filter or fsmonitor runs.
func openStorage(root string) (*filesystem.Storage, func()) {
	r, err := openRealRoot(root)
	if err != nil {
		return nil, func() {}
	}
	if fi, err := r.Lstat(".git"); err != nil || !fi.IsDir() {
		r.Close()
		return nil, func() {}
	}
	g, err := r.OpenRoot(".git")
	r.Close()
	if err != nil {
		return nil, func() {}
	}
	return filesystem.NewStorage(&gitFS{root: g}, cache.NewObjectLRUDefault()), func() { g.Close() }
}

// headCommit is the commit id HEAD of root's repository names, or "".
func headCommit(root string) string {
	st, done := openStorage(root)
	defer done()
	if st == nil {
		return ""
	}
	repo, err := git.Open(st, nil)
	if err != nil {
		return ""
	}
	ref, err := repo.Head()
	if err != nil {
		return ""
	}
	return ref.Hash().String()
}

// commitTree returns the tree of commit id (hex) in root's repository, or
// nil. id comes from the snapshot taken at start: commits the agent made
// since do not move the base of the patch.
func commitTree(root, id string) (*object.Tree, func()) {
	nop := func() {}
	if id == "" {
		return nil, nop
	}
	// Objects only: HEAD and the refs (which the guest may have made
	// FIFOs or moved) are not read.
	st, done := openStorage(root)
	if st == nil {
		return nil, done
	}
	commit, err := object.GetCommit(&cappedObjects{Storage: st}, plumbing.NewHash(id))
	if err != nil {
		return nil, done
	}
	t, err := commit.Tree()
	if err != nil {
		return nil, done
	}
	return t, done
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

// maxGitObjectBytes caps a git object read for --patch.
const maxGitObjectBytes = 16 << 20

// cappedObjects reads objects for --patch with bounds: a loose object is
// read by this code, at most its declared size (capped), and its hash is
// checked, so a small zlib file that inflates to gigabytes (the guest
// writes .git/objects) costs nothing; packed objects are refused above the
// cap by their declared size.
type cappedObjects struct {
	*filesystem.Storage
}

func (c *cappedObjects) EncodedObject(t plumbing.ObjectType, h plumbing.Hash) (plumbing.EncodedObject, error) {
	hx := h.String()
	f, err := c.Filesystem().Open(path.Join("objects", hx[:2], hx[2:]))
	if err == nil {
		defer f.Close()
		r, err := objfile.NewReader(f)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		ot, size, err := r.Header()
		if err != nil {
			return nil, err
		}
		if t != plumbing.AnyObject && ot != t {
			return nil, plumbing.ErrObjectNotFound
		}
		if size < 0 || size > maxGitObjectBytes {
			return nil, errTooLarge
		}
		data, err := io.ReadAll(io.LimitReader(r, size+1))
		if err != nil {
			return nil, err
		}
		if int64(len(data)) != size || r.Hash() != h {
			return nil, errors.New("corrupt git object " + hx)
		}
		obj := &plumbing.MemoryObject{}
		obj.SetType(ot)
		obj.SetSize(size)
		obj.Write(data)
		return obj, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	size, err := c.Storage.EncodedObjectSize(h)
	if err != nil {
		return nil, err
	}
	if size > maxGitObjectBytes {
		return nil, errTooLarge
	}
	return c.Storage.EncodedObject(t, h)
}
