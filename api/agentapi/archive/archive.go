// Package archive writes and extracts the tar streams that copy-in and
// copy-out carry, with docker cp semantics.
//
// An archive made by [Write] holds one top-level entry: the base name of the
// source, or "." when the source path ends in "/." (meaning "the contents of
// this directory"). [Extract] places it at a destination: inside the
// destination if that is an existing directory, otherwise as the
// destination itself. Extraction goes through an [os.Root], so no entry,
// however crafted (absolute names, "..", symlinks planted by earlier
// entries), can create, modify or read anything outside the target tree.
package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ErrUnsafeEntry means an archive entry's name or link target would leave
// the destination tree.
var ErrUnsafeEntry = errors.New("archive entry escapes the destination")

// Write writes a tar archive of src to w. Directories are walked without
// following symlinks; symlinks (including src itself) are archived as
// symlinks. Regular files, directories, symlinks and hard-linked files (as
// copies) are archived; sockets, devices and FIFOs are skipped. If src ends
// in "/." the top-level entry is "." and stands for src's contents.
func Write(w io.Writer, src string) error {
	contents := src == "." || strings.HasSuffix(src, string(filepath.Separator)+".")
	clean := filepath.Clean(src)
	fi, err := os.Lstat(clean)
	if err != nil {
		return fmt.Errorf("archive %s: %w", src, err)
	}
	top := filepath.Base(clean)
	if contents {
		if !fi.IsDir() {
			return fmt.Errorf("archive %s: %s is not a directory", src, clean)
		}
		top = "."
	}
	tw := tar.NewWriter(w)
	if !fi.IsDir() {
		if err := addEntry(tw, clean, top, fi); err != nil {
			return err
		}
		return closeWriter(tw, src)
	}
	err = filepath.WalkDir(clean, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(clean, p)
		if err != nil {
			return err
		}
		name := top
		if rel != "." {
			name = top + "/" + filepath.ToSlash(rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return addEntry(tw, p, name, info)
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", src, err)
	}
	return closeWriter(tw, src)
}

func closeWriter(tw *tar.Writer, src string) error {
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive %s: %w", src, err)
	}
	return nil
}

func addEntry(tw *tar.Writer, p, name string, fi fs.FileInfo) error {
	var link string
	switch {
	case fi.Mode().IsRegular(), fi.IsDir():
	case fi.Mode()&fs.ModeSymlink != 0:
		l, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("read link %s: %w", p, err)
		}
		link = l
	default:
		return nil
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return fmt.Errorf("tar header for %s: %w", p, err)
	}
	hdr.Name = name
	if fi.IsDir() && name != "." {
		hdr.Name += "/"
	}
	hdr.Uname, hdr.Gname = "", ""
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write header for %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscallNoFollow, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	n, err := io.CopyN(tw, f, hdr.Size)
	if err != nil {
		return fmt.Errorf("archive %s: %w (file shrank while copying? %d of %d bytes)", p, err, n, hdr.Size)
	}
	return nil
}

// Options tune Extract.
type Options struct {
	// PreserveOwner applies each entry's uid and gid (lchown). Errors from
	// it are returned; use it only when running as root.
	PreserveOwner bool
}

// Extract reads a tar archive from r and places it at dst: if dst is an
// existing directory (symlinks to directories count), entries are created
// inside it; otherwise the archive must hold a single top-level entry,
// created as dst, whose parent directory must exist. Existing files are
// replaced; an existing directory is merged into, never replaced by a
// non-directory. Entries with absolute names, ".." components, or paths
// that resolve through a symlink to outside the target tree are refused
// with an error wrapping ErrUnsafeEntry or the os.Root escape error;
// entries already extracted stay. Extract stops at the tar end marker and
// does not read r beyond it.
func Extract(r io.Reader, dst string, opts Options) error {
	dst = filepath.Clean(dst)
	var (
		base   string // directory the root is opened at
		rename string // "" = place entries inside base; else name of the single top entry
	)
	fi, err := os.Stat(dst)
	switch {
	case err == nil && fi.IsDir():
		base = dst
	case err == nil || errors.Is(err, fs.ErrNotExist):
		base, rename = filepath.Dir(dst), filepath.Base(dst)
		pfi, perr := os.Stat(base)
		if perr != nil {
			return fmt.Errorf("extract to %s: parent directory: %w", dst, perr)
		}
		if !pfi.IsDir() {
			return fmt.Errorf("extract to %s: parent %s is not a directory", dst, base)
		}
	default:
		return fmt.Errorf("extract to %s: %w", dst, err)
	}
	root, err := os.OpenRoot(base)
	if err != nil {
		return fmt.Errorf("extract to %s: %w", dst, err)
	}
	defer root.Close()
	x := &extractor{root: root, dst: dst, rename: rename, opts: opts}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("extract to %s: read archive: %w", dst, err)
		}
		if err := x.entry(hdr, tr); err != nil {
			return fmt.Errorf("extract %q to %s: %w", hdr.Name, dst, err)
		}
	}
	if x.top == "" && rename != "" {
		return fmt.Errorf("extract to %s: archive is empty", dst)
	}
	// Apply directory modes last so read-only directories can be filled.
	for _, d := range slices.Backward(x.dirs) {
		if err := root.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("extract to %s: chmod %s: %w", dst, d.name, err)
		}
		if !d.mtime.IsZero() {
			_ = root.Chtimes(d.name, d.mtime, d.mtime)
		}
	}
	return nil
}

type dirMode struct {
	name  string
	mode  fs.FileMode
	mtime time.Time
}

type extractor struct {
	root   *os.Root
	dst    string
	rename string
	opts   Options
	top    string // first component of the first entry (rename mode)
	dirs   []dirMode
}

// target maps an archive name to a path relative to the root.
func (x *extractor) target(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: name %q is absolute or empty", ErrUnsafeEntry, name)
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: name %q contains ..", ErrUnsafeEntry, name)
		}
	}
	clean := path.Clean(name)
	if x.rename == "" {
		return clean, nil
	}
	first, rest, _ := strings.Cut(clean, "/")
	if clean == "." {
		first, rest = ".", ""
	} else if strings.HasPrefix(name, "./") || name == "./" {
		// "./x" cleans to "x": keep "." as the top-level entry.
		first, rest = ".", clean
	}
	if x.top == "" {
		x.top = first
	} else if first != x.top {
		return "", fmt.Errorf("archive has more than one top-level entry (%q and %q); %s does not exist, so it must have one", x.top, first, x.dst)
	}
	if rest == "" {
		return x.rename, nil
	}
	return x.rename + "/" + rest, nil
}

func (x *extractor) entry(hdr *tar.Header, tr io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader:
		return nil
	}
	p, err := x.target(hdr.Name)
	if err != nil {
		return err
	}
	mode := hdr.FileInfo().Mode()
	if p != "." {
		if err := x.root.MkdirAll(path.Dir(p), 0o755); err != nil {
			return fmt.Errorf("create parent directory: %w", err)
		}
	}
	existing, lerr := x.root.Lstat(p)
	exists := lerr == nil
	switch hdr.Typeflag {
	case tar.TypeDir:
		if exists && !existing.IsDir() {
			if err := x.root.Remove(p); err != nil {
				return fmt.Errorf("replace with directory: %w", err)
			}
			exists = false
		}
		if !exists {
			if err := x.root.Mkdir(p, 0o700); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
		}
		x.dirs = append(x.dirs, dirMode{name: p, mode: mode.Perm() | mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), mtime: hdr.ModTime})
	case tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
		if exists {
			if existing.IsDir() {
				return fmt.Errorf("cannot overwrite directory with a non-directory")
			}
			if err := x.root.Remove(p); err != nil {
				return fmt.Errorf("replace existing file: %w", err)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeReg:
			f, err := x.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("create: %w", err)
			}
			_, cerr := io.Copy(f, tr)
			if err := f.Close(); cerr == nil {
				cerr = err
			}
			if cerr != nil {
				return fmt.Errorf("write: %w", cerr)
			}
			if err := x.root.Chmod(p, mode.Perm()|mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				return fmt.Errorf("chmod: %w", err)
			}
			_ = x.root.Chtimes(p, hdr.ModTime, hdr.ModTime)
		case tar.TypeSymlink:
			if err := x.root.Symlink(hdr.Linkname, p); err != nil {
				return fmt.Errorf("symlink: %w", err)
			}
		case tar.TypeLink:
			old, err := x.target(hdr.Linkname)
			if err != nil {
				return fmt.Errorf("hard link target: %w", err)
			}
			if err := x.root.Link(old, p); err != nil {
				return fmt.Errorf("hard link: %w", err)
			}
		}
	default:
		return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}
	if x.opts.PreserveOwner {
		if err := x.root.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	return nil
}
