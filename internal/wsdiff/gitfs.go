package wsdiff

import (
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/go-git/go-billy/v5"
)

// errReadOnly is returned by every write of a gitFS.
var errReadOnly = errors.New("read-only")

// gitFS is a read-only billy filesystem on an os.Root for go-git to read a
// guest-controlled .git folder from. No path leads outside the root, files
// are opened with O_NONBLOCK (a FIFO at HEAD, a ref or an object never
// blocks) and only regular files are handed out, checked on the open fd;
// folders are opened with O_DIRECTORY.
type gitFS struct {
	root *os.Root
	dir  string // prefix inside root, for Chroot ("" or slash-separated)
}

// maxGitFileBytes caps a file gitFS hands out (a sparse 4 TiB pack is not
// read).
const maxGitFileBytes = 1 << 30

var _ billy.Filesystem = (*gitFS)(nil)

func (g *gitFS) rel(name string) string {
	name = filepath.ToSlash(name)
	p := path.Clean("/" + path.Join(g.dir, name))
	p = strings.TrimPrefix(p, "/")
	if p == "" {
		return "."
	}
	return p
}

func (g *gitFS) Create(string) (billy.File, error) { return nil, errReadOnly }

func (g *gitFS) Open(name string) (billy.File, error) { return g.OpenFile(name, os.O_RDONLY, 0) }

func (g *gitFS) OpenFile(name string, flag int, _ os.FileMode) (billy.File, error) {
	if flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND) != 0 {
		return nil, &os.PathError{Op: "open", Path: name, Err: errReadOnly}
	}
	f, err := g.root.OpenFile(g.rel(name), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxGitFileBytes {
		f.Close()
		return nil, &os.PathError{Op: "open", Path: name, Err: errors.New("not a regular file of sane size")}
	}
	return &gitFile{File: f, name: name}, nil
}

func (g *gitFS) Stat(name string) (os.FileInfo, error)  { return g.root.Stat(g.rel(name)) }
func (g *gitFS) Lstat(name string) (os.FileInfo, error) { return g.root.Lstat(g.rel(name)) }
func (g *gitFS) Rename(string, string) error            { return errReadOnly }
func (g *gitFS) Remove(string) error                    { return errReadOnly }
func (g *gitFS) Join(elem ...string) string             { return filepath.Join(elem...) }
func (g *gitFS) TempFile(string, string) (billy.File, error) {
	return nil, errReadOnly
}
func (g *gitFS) MkdirAll(string, os.FileMode) error { return errReadOnly }
func (g *gitFS) Symlink(string, string) error       { return errReadOnly }
func (g *gitFS) Readlink(name string) (string, error) {
	return g.root.Readlink(g.rel(name))
}

// ReadDir lists a folder opened with O_DIRECTORY (never a FIFO).
func (g *gitFS) ReadDir(name string) ([]os.FileInfo, error) {
	f, err := g.root.OpenFile(g.rel(name), os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	out := make([]os.FileInfo, 0, len(ents))
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			out = append(out, fi)
		}
	}
	slices.SortFunc(out, func(a, b os.FileInfo) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

func (g *gitFS) Chroot(p string) (billy.Filesystem, error) {
	return &gitFS{root: g.root, dir: g.rel(p)}, nil
}

func (g *gitFS) Root() string { return filepath.Join(g.root.Name(), filepath.FromSlash(g.dir)) }

type gitFile struct {
	*os.File
	name string
}

func (f *gitFile) Name() string              { return f.name }
func (f *gitFile) Write([]byte) (int, error) { return 0, errReadOnly }
func (f *gitFile) Lock() error               { return nil }
func (f *gitFile) Unlock() error             { return nil }
func (f *gitFile) Truncate(int64) error      { return errReadOnly }
