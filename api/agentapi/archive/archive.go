// Package archive writes and extracts the tar streams that copy-in and
// copy-out carry, with docker cp semantics.
//
// An archive made by [Write] holds one top-level entry: the base name of the
// source, or "." when the source path ends in "/." (meaning "the contents of
// this directory"). [Extract] places it at a destination: inside the
// destination if that is an existing directory, otherwise as the
// destination itself. The destination is opened without following
// symbolic links, and extraction goes through an [os.Root], so no entry,
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
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafeEntry means an archive entry's name or link target would leave
// the destination tree.
var ErrUnsafeEntry = errors.New("archive entry escapes the destination")

// ErrNotCopyable means the source of a copy is a FIFO, socket or device:
// only files, folders and links are copied.
var ErrNotCopyable = errors.New("only files, folders and symbolic links are copied")

// CheckCopyable refuses a copy's source of mode m that Write would not
// archive.
func CheckCopyable(src string, m fs.FileMode) error {
	if m.IsDir() || m.IsRegular() || m&fs.ModeSymlink != 0 {
		return nil
	}
	kind := "a special file"
	switch {
	case m&fs.ModeNamedPipe != 0:
		kind = "a FIFO"
	case m&fs.ModeSocket != 0:
		kind = "a socket"
	case m&fs.ModeDevice != 0:
		kind = "a device"
	}
	return fmt.Errorf("%s is %s: %w", src, kind, ErrNotCopyable)
}

// FollowParents is src with the symbolic links on the way to it resolved
// (its folders; all of it for "DIR/." or "."), for a caller that means to
// follow them: Write follows none. The guest's copy-out uses it; the host
// resolves its own way (a link in a workspace is refused).
func FollowParents(src string) (string, error) {
	clean := filepath.Clean(src)
	if src == "." || strings.HasSuffix(src, string(filepath.Separator)+".") {
		real, err := filepath.EvalSymlinks(clean)
		if err != nil {
			return "", err
		}
		return strings.TrimSuffix(real, string(filepath.Separator)) + string(filepath.Separator) + ".", nil
	}
	if clean == "/" || clean == "." {
		return clean, nil
	}
	real, err := filepath.EvalSymlinks(filepath.Dir(clean))
	if err != nil {
		return "", err
	}
	return filepath.Join(real, filepath.Base(clean)), nil
}

// Write writes a tar archive of src to w. Directories are walked without
// following symlinks; symlinks (including src itself) are archived as
// symlinks. Regular files, directories, symlinks and hard-linked files (as
// copies) are archived; sockets, devices and FIFOs are skipped. If src ends
// in "/." the top-level entry is "." and stands for src's contents.
//
// src itself is the caller's: the folders leading to it are resolved as
// usual (its last component is not followed). Everything below it is read
// relative to its parent folder's descriptor: each folder is opened with
// openat(O_DIRECTORY|O_NOFOLLOW), each file with openat(O_NOFOLLOW|
// O_NONBLOCK), and what is archived is what the descriptor is (fstat), so
// a folder swapped for a symlink while the walk runs (a guest sharing the
// folder can do that) makes Write fail rather than read where the link
// leads.
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
	// The folders on the way are opened one at a time, never through a
	// symbolic link: a guest may make one in a workspace (ws/dist ->
	// /root/secret) or swap a folder for one while the copy starts.
	pfd, last, err := walkParent(clean, true)
	if err != nil {
		return fmt.Errorf("archive %s: %w", src, err)
	}
	defer unix.Close(pfd)
	if last == "" {
		last = "."
	}
	if err := CheckCopyable(clean, fi.Mode()); err != nil {
		return fmt.Errorf("archive %s: %w", src, err)
	}
	tw := tar.NewWriter(w)
	switch {
	case fi.IsDir():
		fd, err := unix.Openat(pfd, last, openDirFlags, 0)
		if err != nil {
			return fmt.Errorf("archive %s: %w", src, openErr(clean, err))
		}
		d := os.NewFile(uintptr(fd), clean)
		err = writeDir(tw, d, clean, top)
		d.Close()
		if err != nil {
			return fmt.Errorf("archive %s: %w", src, err)
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		link, err := readlinkAt(pfd, last)
		if err != nil {
			return fmt.Errorf("archive %s: read link: %w", src, err)
		}
		if err := writeHeader(tw, fi, link, clean, top); err != nil {
			return fmt.Errorf("archive %s: %w", src, err)
		}
	case fi.Mode().IsRegular():
		fd, err := unix.Openat(pfd, last, openFileFlags, 0)
		if err != nil {
			return fmt.Errorf("archive %s: %w", src, openErr(clean, err))
		}
		f := os.NewFile(uintptr(fd), clean)
		err = writeFile(tw, f, clean, top)
		f.Close()
		if err != nil {
			return fmt.Errorf("archive %s: %w", src, err)
		}
	}
	return closeWriter(tw, src)
}

const (
	// openDirFlags opens a folder to list it; never through a symlink.
	openDirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	// openFileFlags opens a file to read it; never through a symlink,
	// and a FIFO put in its place cannot make the open hang.
	openFileFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
)

// openErr describes a failed open of p, saying so when p was swapped for
// a symlink (ELOOP from O_NOFOLLOW; ENOTDIR from O_DIRECTORY).
func openErr(p string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("%s changed while it was being copied (%w); not following it", p, err)
	}
	return &fs.PathError{Op: "open", Path: p, Err: err}
}

// writeDir archives the folder open at d (p on the host, name in the
// archive) and everything below it, reading every entry relative to d.
func writeDir(tw *tar.Writer, d *os.File, p, name string) error {
	fi, err := d.Stat()
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s changed while it was being copied: not a directory", p)
	}
	if err := writeHeader(tw, fi, "", p, name); err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", p, err)
	}
	slices.Sort(names)
	dirfd := int(d.Fd())
	for _, n := range names {
		if err := writeAt(tw, dirfd, n, p+string(filepath.Separator)+n, name+"/"+n); err != nil {
			return err
		}
	}
	return nil
}

// writeAt archives the entry n of the folder open at dirfd (p on the
// host, name in the archive) as what it is when opened: it is looked at
// with fstatat(AT_SYMLINK_NOFOLLOW), opened without following a symlink,
// and its header made from the descriptor's fstat.
func writeAt(tw *tar.Writer, dirfd int, n, p, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	var flags int
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		flags = openDirFlags
	case unix.S_IFREG:
		flags = openFileFlags
	case unix.S_IFLNK:
		flags = unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
	default:
		return nil // sockets, devices and FIFOs are skipped, never opened
	}
	fd, err := unix.Openat(dirfd, n, flags, 0)
	if err != nil {
		return openErr(p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return writeDir(tw, f, p, name)
	case unix.S_IFREG:
		return writeFile(tw, f, p, name)
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		return fmt.Errorf("%s changed while it was being copied: no longer a symlink", p)
	}
	link, err := readlinkFd(fd)
	if err != nil {
		return fmt.Errorf("read link %s: %w", p, err)
	}
	return writeHeader(tw, fi, link, p, name)
}

// readlinkFd reads the target of the symlink open (O_PATH|O_NOFOLLOW) at fd.
func readlinkFd(fd int) (string, error) { return readlinkAt(fd, "") }

// readlinkAt reads the target of the symlink name in the folder open at
// dirfd ("": the symlink open at dirfd).
func readlinkAt(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// writeFile archives the file open at f (p on the host, name in the
// archive): what the descriptor is, only if it is a regular file.
func writeFile(tw *tar.Writer, f *os.File, p, name string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil // swapped for something else meanwhile: skipped like it
	}
	if err := writeHeader(tw, fi, "", p, name); err != nil {
		return err
	}
	n, err := io.CopyN(tw, f, fi.Size())
	if err != nil {
		return fmt.Errorf("archive %s: %w (file shrank while copying? %d of %d bytes)", p, err, n, fi.Size())
	}
	return nil
}

func closeWriter(tw *tar.Writer, src string) error {
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive %s: %w", src, err)
	}
	return nil
}

// writeHeader writes the header of an entry described by fi (from an
// fstat or lstat, never a followed path) as name in the archive.
func writeHeader(tw *tar.Writer, fi fs.FileInfo, link, p, name string) error {
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
	return nil
}

// Options tune Extract.
type Options struct {
	// PreserveOwner applies each entry's uid and gid (lchown). Errors from
	// it are returned; use it only when running as root.
	PreserveOwner bool
	// KeepSetID keeps set-uid and set-gid bits. Without it they are
	// dropped from every entry (the sticky bit stays): what comes out of
	// a sandbox never becomes a set-id program on the host.
	KeepSetID bool
	// Name, when set, is the name the top-level entry takes inside an
	// existing destination directory, whatever the archive calls it: the
	// name the user's command implies (see TopName), so an untrusted
	// archive cannot choose to land as .bashrc or .ssh. "." merges the
	// contents into the destination.
	Name string
	// FollowDestLinks resolves the destination path as any path is,
	// symbolic links included. Without it the destination is opened one
	// component at a time with O_NOFOLLOW and a symbolic link anywhere in
	// it (the destination itself or a folder on the way) is refused with
	// an error wrapping ErrDestinationLink: on the host a link in a
	// workspace may be the guest's, and would send its files anywhere.
	// Set it only where the destination's links are no one else's (the
	// guest's own file system, on copy-in).
	FollowDestLinks bool
}

// TopName is the top-level name Write gives the archive of src: "." when
// src ends in "/." (its contents), else src's base name.
func TopName(src string) string {
	if src == "." || strings.HasSuffix(src, string(filepath.Separator)+".") {
		return "."
	}
	return filepath.Base(filepath.Clean(src))
}

// Extract reads a tar archive from r and places it at dst. The archive
// must hold a single top-level entry (as [Write] makes): if dst is an
// existing directory, that entry is created inside it, or, when the entry
// is ".", its contents are merged into dst (whose own mode, owner and
// times are kept); otherwise the entry is created as dst, whose parent
// directory must exist. Existing files are replaced; an existing directory
// is merged into, never replaced by a non-directory.
//
// dst is never resolved through a symbolic link (unless
// [Options.FollowDestLinks]): it is opened component by component with
// O_NOFOLLOW from "/" or the current folder, a link anywhere in it is
// refused with an error wrapping [ErrDestinationLink] that names it, and
// everything is written through the folder so opened.
//
// Extraction is confined to the copied tree: the top-level entry is
// created first and every later entry goes through an [os.Root] opened at
// it, so nothing outside the tree is created, written, chmodded or linked
// to. Within the tree no entry, hard-link target or deferred mode change
// may pass through a symlink (one the archive planted or one already
// there), and modes, times and owners are never applied through one.
// Entries with absolute names, ".." components, a second top-level entry,
// or paths through a symlink are refused with an error wrapping
// ErrUnsafeEntry (or the os.Root escape error); entries already extracted
// stay. Extract stops at the tar end marker and does not read r beyond it.
//
// A dst ending in "/" (or "/.") names a folder, as in POSIX and docker
// cp: it must be an existing folder, and the entry goes inside it. When
// it does not exist the error wraps fs.ErrNotExist, when it is not a
// folder [ErrNotFolder]; nothing is written either way.
func Extract(r io.Reader, dst string, opts Options) error {
	folder := namesFolder(dst)
	orig := dst
	dst = filepath.Clean(dst)
	parent, name, isDir, err := destination(dst, opts)
	if err != nil {
		return err
	}
	if folder && !isDir {
		parent.Close()
		return notFolderErr(orig)
	}
	defer parent.Close()
	x := &extractor{parent: parent, dst: dst, name: name, opts: opts, dirsOK: map[string]bool{".": true}}
	defer x.close()
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
	if x.top == "" {
		// Into a folder too: a copy that writes nothing is refused, not
		// reported done.
		return fmt.Errorf("extract to %s: archive is empty", dst)
	}
	// Apply directory modes last so read-only directories can be filled.
	// Only directories inside the tree are recorded, their parents were
	// checked when they were made, and directories are never replaced
	// during extraction; the Lstat makes sure the last component is still
	// a directory, not a symlink.
	for _, d := range slices.Backward(x.dirs) {
		fi, err := x.tree.Lstat(d.name)
		if err != nil {
			return fmt.Errorf("extract to %s: chmod %s: %w", dst, d.name, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("extract to %s: chmod %s: %w: no longer a directory", dst, d.name, ErrUnsafeEntry)
		}
		if err := x.tree.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("extract to %s: chmod %s: %w", dst, d.name, err)
		}
		if !d.mtime.IsZero() {
			_ = x.tree.Chtimes(d.name, d.mtime, d.mtime)
		}
	}
	return nil
}

type dirMode struct {
	name  string // relative to the tree root
	mode  fs.FileMode
	mtime time.Time
}

type extractor struct {
	parent *os.Root // the directory holding the top-level entry
	dst    string
	name   string // the top-level entry's name in parent; "" = the archive's own
	opts   Options

	top     string   // first component of the first entry; "" before it
	topDone bool     // the top-level entry exists
	tree    *os.Root // the copied tree, once the top-level entry is a directory
	dirs    []dirMode
	dirsOK  map[string]bool // tree paths checked to be real directories
	seq     int             // temporary names made
	// made holds the files this extraction wrote into the tree, by path,
	// with their inode: the only files a hard link entry may name.
	made map[string]fileID
}

// fileID is a file's device and inode.
type fileID struct{ dev, ino uint64 }

func idOf(fi fs.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{uint64(st.Dev), st.Ino}, true
}

func (x *extractor) close() {
	if x.tree != nil && x.tree != x.parent {
		x.tree.Close()
	}
}

// split checks an archive name and splits it into its top-level component
// and the path below it ("" for the top-level entry itself).
func split(name string) (first, rest string, err error) {
	if name == "" || strings.HasPrefix(name, "/") {
		return "", "", fmt.Errorf("%w: name %q is absolute or empty", ErrUnsafeEntry, name)
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == ".." {
			return "", "", fmt.Errorf("%w: name %q contains ..", ErrUnsafeEntry, name)
		}
	}
	clean := path.Clean(name)
	switch {
	case clean == ".":
		return ".", "", nil
	case strings.HasPrefix(name, "./"):
		// "./x" cleans to "x": keep "." as the top-level entry.
		return ".", clean, nil
	}
	first, rest, _ = strings.Cut(clean, "/")
	return first, rest, nil
}

func (x *extractor) entry(hdr *tar.Header, tr io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader:
		return nil
	}
	first, rest, err := split(hdr.Name)
	if err != nil {
		return err
	}
	if x.top == "" {
		x.top = first
	} else if first != x.top {
		return fmt.Errorf("%w: archive has more than one top-level entry (%q and %q)", ErrUnsafeEntry, x.top, first)
	}
	if rest == "" {
		return x.topEntry(hdr, tr)
	}
	if x.tree == nil {
		if x.topDone {
			return fmt.Errorf("%w: entry below the top-level entry %q, which is not a directory", ErrUnsafeEntry, x.top)
		}
		if err := x.implicitTop(); err != nil {
			return err
		}
	}
	if err := x.ensureDirs(path.Dir(rest), true); err != nil {
		return err
	}
	return x.place(x.tree, rest, hdr, tr)
}

// topEntry creates the top-level entry in the parent and, for a
// directory, opens the tree root at it.
func (x *extractor) topEntry(hdr *tar.Header, tr io.Reader) error {
	name := x.name
	if name == "" {
		name = x.top
	}
	if x.tree != nil || (name == "." && hdr.Typeflag == tar.TypeDir) {
		// The tree exists (a repeated entry for it) or is the destination
		// directory itself (contents of "." into an existing directory).
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("cannot overwrite directory with a non-directory")
		}
		if x.tree == nil {
			x.tree = x.parent
		}
		x.topDone = true
		if x.tree == x.parent {
			// Merging into the existing destination folder: it keeps its
			// own mode, owner and times, whatever the archive says.
			return nil
		}
		x.dirs = append(x.dirs, dirMode{name: ".", mode: x.modeOf(hdr), mtime: hdr.ModTime})
		return x.chown(x.parent, name, hdr)
	}
	if name == "." {
		return fmt.Errorf("cannot overwrite directory with a non-directory")
	}
	if x.topDone {
		return fmt.Errorf("%w: the top-level entry %q appears twice", ErrUnsafeEntry, x.top)
	}
	if hdr.Typeflag == tar.TypeLink {
		return fmt.Errorf("%w: the top-level entry is a hard link (to %q), which cannot point inside the copied tree", ErrUnsafeEntry, hdr.Linkname)
	}
	if err := x.place(x.parent, name, hdr, tr); err != nil {
		return err
	}
	x.topDone = true
	if hdr.Typeflag != tar.TypeDir {
		return nil
	}
	x.dirs = x.dirs[:len(x.dirs)-1] // recorded by place relative to the parent; re-record in the tree
	tree, err := x.parent.OpenRoot(name)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	x.tree = tree
	x.dirs = append(x.dirs, dirMode{name: ".", mode: x.modeOf(hdr), mtime: hdr.ModTime})
	return nil
}

// implicitTop opens the tree at the top-level directory when the archive
// has entries below it but none for it: it is made (mode 0755) if
// missing, and left as it is if it exists.
func (x *extractor) implicitTop() error {
	name := x.name
	if name == "" {
		name = x.top
	}
	x.topDone = true
	if name == "." {
		x.tree = x.parent
		return nil
	}
	fi, err := x.parent.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := x.parent.Mkdir(name, 0o755); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%w: path passes through the symlink %s", ErrUnsafeEntry, name)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", name)
	}
	tree, err := x.parent.OpenRoot(name)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	x.tree = tree
	return nil
}

// ensureDirs makes sure every component of dir (a path in the tree) is a
// real directory, creating missing ones when create is set, and refuses
// symlinks.
func (x *extractor) ensureDirs(dir string, create bool) error {
	if dir == "." {
		return nil
	}
	q := ""
	for c := range strings.SplitSeq(dir, "/") {
		if q == "" {
			q = c
		} else {
			q += "/" + c
		}
		if x.dirsOK[q] {
			continue
		}
		fi, err := x.tree.Lstat(q)
		switch {
		case errors.Is(err, fs.ErrNotExist) && create:
			if err := x.tree.Mkdir(q, 0o755); err != nil {
				return fmt.Errorf("create parent directory: %w", err)
			}
		case err != nil:
			return fmt.Errorf("parent directory %s: %w", q, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("%w: path passes through the symlink %s", ErrUnsafeEntry, q)
		case !fi.IsDir():
			return fmt.Errorf("parent %s is not a directory", q)
		}
		x.dirsOK[q] = true
	}
	return nil
}

// place creates one entry at p in root; p's parent directories exist and
// are not symlinks.
func (x *extractor) place(root *os.Root, p string, hdr *tar.Header, tr io.Reader) error {
	existing, lerr := root.Lstat(p)
	exists := lerr == nil
	switch hdr.Typeflag {
	case tar.TypeDir:
		if exists && !existing.IsDir() {
			// A symlink (or file) here is replaced, never followed.
			if err := root.Remove(p); err != nil {
				return fmt.Errorf("replace with directory: %w", err)
			}
			exists = false
		}
		if !exists {
			if err := root.Mkdir(p, 0o700); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
		}
		x.dirs = append(x.dirs, dirMode{name: p, mode: x.modeOf(hdr), mtime: hdr.ModTime})
		if root == x.tree {
			x.dirsOK[p] = true
		}
	case tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
		var old string
		if hdr.Typeflag == tar.TypeLink {
			var err error
			if old, err = x.linkTarget(hdr.Linkname); err != nil {
				return fmt.Errorf("hard link target: %w", err)
			}
		}
		if exists && existing.IsDir() {
			return fmt.Errorf("cannot overwrite directory with a non-directory")
		}
		// Made under a temporary name beside p and renamed over it once
		// complete: an entry cut short (a client gone, a full disk)
		// leaves whatever was at p as it was.
		x.seq++
		tmp := path.Join(path.Dir(p), fmt.Sprintf(".sbx-partial-%d-%d", os.Getpid(), x.seq))
		if err := x.placeAt(root, tmp, old, hdr, tr); err != nil {
			_ = root.Remove(tmp)
			return err
		}
		if err := x.chown(root, tmp, hdr); err != nil {
			_ = root.Remove(tmp)
			return err
		}
		if err := root.Rename(tmp, p); err != nil {
			_ = root.Remove(tmp)
			return fmt.Errorf("replace: %w", err)
		}
		if root == x.tree {
			delete(x.made, p)
		}
		if hdr.Typeflag == tar.TypeReg {
			if fi, err := root.Lstat(p); err == nil && fi.Mode().IsRegular() {
				_ = root.Chtimes(p, hdr.ModTime, hdr.ModTime)
				if id, ok := idOf(fi); ok && root == x.tree {
					if x.made == nil {
						x.made = map[string]fileID{}
					}
					x.made[p] = id
				}
			}
		}
		return nil
	default:
		return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}
	return x.chown(root, p, hdr)
}

// placeAt makes the file, symlink or hard link (to old) of hdr at the
// free name p.
func (x *extractor) placeAt(root *os.Root, p, old string, hdr *tar.Header, tr io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeReg:
		// O_EXCL: a fresh name; never opens through a symlink.
		f, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		cerr := copySparse(f, tr)
		if cerr == nil {
			cerr = f.Chmod(x.modeOf(hdr))
		}
		if err := f.Close(); cerr == nil {
			cerr = err
		}
		if cerr != nil {
			return fmt.Errorf("write: %w", cerr)
		}
	case tar.TypeSymlink:
		// Created as-is; later entries never pass through it.
		if err := root.Symlink(hdr.Linkname, p); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
	case tar.TypeLink:
		if err := x.tree.Link(old, p); err != nil {
			return fmt.Errorf("hard link: %w", err)
		}
	}
	return nil
}

// linkTarget maps a hard link's target to a regular file already in the
// tree, reached without passing through a symlink.
func (x *extractor) linkTarget(name string) (string, error) {
	first, rest, err := split(name)
	if err != nil {
		return "", err
	}
	if x.tree == nil || first != x.top || rest == "" {
		return "", fmt.Errorf("%w: %q is not inside the copied tree", ErrUnsafeEntry, name)
	}
	if err := x.ensureDirs(path.Dir(rest), false); err != nil {
		return "", err
	}
	fi, err := x.tree.Lstat(rest)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %q is not a regular file", ErrUnsafeEntry, name)
	}
	// Only a file this copy made: a link to one that was there before
	// (the destination's own .git/config, a key beside the workspace)
	// would hand it to whoever writes the copy's files.
	if id, ok := idOf(fi); !ok || x.made[rest] != id {
		return "", fmt.Errorf("%w: hard link to %q, which this copy did not write", ErrUnsafeEntry, name)
	}
	return rest, nil
}

func (x *extractor) chown(root *os.Root, p string, hdr *tar.Header) error {
	if !x.opts.PreserveOwner {
		return nil
	}
	if err := root.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	return nil
}

// modeOf is the mode an entry gets: its permissions and sticky bit, and
// its set-id bits only with KeepSetID.
func (x *extractor) modeOf(hdr *tar.Header) fs.FileMode {
	m := hdr.FileInfo().Mode()
	keep := fs.ModeSticky
	if x.opts.KeepSetID {
		keep |= fs.ModeSetuid | fs.ModeSetgid
	}
	return m.Perm() | m&keep
}

// sparseBlock is the unit copySparse looks for runs of zeros in.
const sparseBlock = 64 << 10

// copySparse writes r to f leaving every all-zero block a hole, so an
// entry that is mostly zeros (a sparse file in the guest, or a tar sparse
// entry the reader expands) takes on the host the space of its data, not
// of its size.
func copySparse(f *os.File, r io.Reader) error {
	buf := make([]byte, sparseBlock)
	var size int64
	hole := false
	for {
		n, err := fill(r, buf)
		if n > 0 {
			b := buf[:n]
			if allZero(b) {
				if _, serr := f.Seek(int64(n), io.SeekCurrent); serr != nil {
					return serr
				}
				hole = true
			} else {
				if _, werr := f.Write(b); werr != nil {
					return werr
				}
				hole = false
			}
			size += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if hole {
		return f.Truncate(size)
	}
	return nil
}

// fill reads into buf until it is full or r ends (io.EOF, with what was
// read) or fails (any other error, a truncated entry's included).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
