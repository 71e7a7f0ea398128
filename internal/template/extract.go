package template

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafeEntry is returned when an archive entry would land outside the
// tree being extracted.
var ErrUnsafeEntry = errors.New("unsafe archive entry")

// sourceError marks a failure to read the archive (a broken file, a
// registry that went away mid-download), as opposed to a failure to write
// the tree.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// extractOptions tune extractTar.
type extractOptions struct {
	// Owners keeps the entries' uid and gid and creates device nodes; it
	// needs root. Without it files belong to the caller and device nodes
	// are skipped.
	Owners bool
	// Progress, when set, is called with the bytes of file content written
	// so far, at most every few seconds.
	Progress func(bytes int64)
}

// extractTar writes the tar stream r (one flattened file system, as
// mutate.Extract makes it) into the existing folder dir. Every entry is
// written through an os.Root, so no name, symbolic link or hard link can
// reach outside dir; names with ".." components are rejected with
// ErrUnsafeEntry. Regular files, folders, symbolic and hard links, FIFOs
// and (with Owners) device nodes are created with their modes, owners,
// modification times and extended attributes. Entries below a name that
// an earlier entry made a non-folder are skipped, as are later entries for
// a name already written (the stream lists upper layers first). Hard
// links whose target comes later in the stream are made at the end.
func extractTar(r io.Reader, dir string, opts extractOptions) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open extraction root: %w", err)
	}
	defer root.Close()
	x := &extractor{root: root, opts: opts, lastReport: time.Now()}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// mutate.Extract ends the archive properly even when it
			// fails, and only then reports the error: read to the end.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return &sourceError{fmt.Errorf("read archive: %w", err)}
			}
			break
		}
		if err != nil {
			return &sourceError{fmt.Errorf("read archive: %w", err)}
		}
		if err := x.entry(hdr, tr); err != nil {
			return err
		}
	}
	return x.finish()
}

type extractor struct {
	root *os.Root
	opts extractOptions
	// dirs are the folders seen, whose attributes are set at the end
	// (deepest first), once nothing more is written into them.
	dirs []*tar.Header
	// links are hard links whose target did not exist yet.
	links      []*tar.Header
	written    int64
	lastReport time.Time
}

// entryName cleans an archive name into a path relative to the root:
// leading "/" and "./" are dropped; ".." components are rejected.
func entryName(name string) (string, error) {
	clean := path.Clean("/" + name)
	rel := strings.TrimPrefix(clean, "/")
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: %q leaves the image's root", ErrUnsafeEntry, name)
		}
	}
	if rel == "" {
		rel = "."
	}
	return rel, nil
}

func (x *extractor) entry(hdr *tar.Header, body io.Reader) error {
	name, err := entryName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		return nil // the root keeps the mode pack gives it
	}
	if err := x.parent(name); err != nil {
		if errors.Is(err, errShadowed) {
			return nil
		}
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		fi, err := x.root.Lstat(name)
		switch {
		case err == nil && fi.IsDir():
		case err == nil:
			return nil // a file of an upper layer shadows this folder
		default:
			if err := x.root.Mkdir(name, 0o700); err != nil {
				return fmt.Errorf("create /%s: %w", name, err)
			}
		}
		h := *hdr
		h.Name = name
		x.dirs = append(x.dirs, &h)
		return nil
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old archives still use TypeRegA
		if x.exists(name) {
			return nil
		}
		f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("create /%s: %w", name, err)
		}
		src := &readErrs{r: body}
		n, err := io.Copy(f, src)
		x.written += n
		if err != nil {
			f.Close()
			if src.err != nil {
				return &sourceError{fmt.Errorf("read /%s from the archive: %w", name, err)}
			}
			return fmt.Errorf("write /%s: %w", name, err)
		}
		if err := x.attrs(f, hdr); err != nil {
			f.Close()
			return fmt.Errorf("/%s: %w", name, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("write /%s: %w", name, err)
		}
		if err := x.root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
			return fmt.Errorf("set times of /%s: %w", name, err)
		}
		x.report()
		return nil
	case tar.TypeSymlink:
		if x.exists(name) {
			return nil
		}
		if err := x.root.Symlink(hdr.Linkname, name); err != nil {
			return fmt.Errorf("create link /%s: %w", name, err)
		}
		if x.opts.Owners {
			if err := x.root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return fmt.Errorf("chown /%s: %w", name, err)
			}
		}
		return nil
	case tar.TypeLink:
		if _, err := entryName(hdr.Linkname); err != nil {
			return err
		}
		if x.exists(name) {
			return nil
		}
		if err := x.link(hdr, name); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				h := *hdr
				h.Name = name
				x.links = append(x.links, &h)
				return nil
			}
			return err
		}
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if x.exists(name) {
			return nil
		}
		return x.node(hdr, name)
	}
	return nil // pax headers and other metadata
}

// errShadowed says an entry lies below a name that is not a folder.
var errShadowed = errors.New("shadowed")

// parent makes sure name's parent folders exist (mode 0755 for folders the
// archive did not list, as container runtimes do).
func (x *extractor) parent(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	fi, err := x.root.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return errShadowed
		}
		return nil
	}
	if err := x.root.MkdirAll(dir, 0o755); err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			return errShadowed
		}
		return fmt.Errorf("create /%s: %w", dir, err)
	}
	return nil
}

// exists reports whether an upper layer (or an implicit parent folder)
// already took name.
func (x *extractor) exists(name string) bool {
	_, err := x.root.Lstat(name)
	return err == nil
}

func (x *extractor) link(hdr *tar.Header, name string) error {
	target, _ := entryName(hdr.Linkname)
	if err := x.root.Link(target, name); err != nil {
		return fmt.Errorf("create hard link /%s to /%s: %w", name, target, err)
	}
	return nil
}

// node creates a device node or FIFO through its parent folder's
// descriptor.
func (x *extractor) node(hdr *tar.Header, name string) error {
	var mode uint32
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode = unix.S_IFCHR
	case tar.TypeBlock:
		mode = unix.S_IFBLK
	default:
		mode = unix.S_IFIFO
	}
	if mode != unix.S_IFIFO && !x.opts.Owners {
		return nil
	}
	d, err := x.root.OpenFile(path.Dir(name), os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("open /%s: %w", path.Dir(name), err)
	}
	defer d.Close()
	base := path.Base(name)
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	if err := unix.Mknodat(int(d.Fd()), base, mode|0o600, int(dev)); err != nil {
		return fmt.Errorf("create device /%s: %w", name, err)
	}
	if x.opts.Owners {
		if err := unix.Fchownat(int(d.Fd()), base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown /%s: %w", name, err)
		}
	}
	if err := unix.Fchmodat(int(d.Fd()), base, uint32(hdr.Mode)&0o7777, 0); err != nil {
		return fmt.Errorf("chmod /%s: %w", name, err)
	}
	return nil
}

// attrs gives the open file or folder f the entry's owner, mode and
// extended attributes. The mode comes after the owner, since chown clears
// set-id bits.
func (x *extractor) attrs(f *os.File, hdr *tar.Header) error {
	if x.opts.Owners {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := f.Chmod(tarMode(hdr)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		err := unix.Fsetxattr(int(f.Fd()), attr, []byte(v), 0)
		if err != nil && !errors.Is(err, unix.ENOTSUP) && !(errors.Is(err, unix.EPERM) && !x.opts.Owners) {
			return fmt.Errorf("set attribute %s: %w", attr, err)
		}
	}
	return nil
}

// tarMode converts a tar mode (permission, set-id and sticky bits) to an
// os.FileMode.
func tarMode(hdr *tar.Header) os.FileMode {
	m := os.FileMode(hdr.Mode & 0o777)
	if hdr.Mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if hdr.Mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if hdr.Mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

func (x *extractor) report() {
	if x.opts.Progress != nil && time.Since(x.lastReport) > 5*time.Second {
		x.lastReport = time.Now()
		x.opts.Progress(x.written)
	}
}

// finish makes the hard links that waited for their targets and sets the
// folders' attributes, deepest first.
func (x *extractor) finish() error {
	for _, h := range x.links {
		if x.exists(h.Name) {
			continue
		}
		if err := x.link(h, h.Name); err != nil {
			return err
		}
	}
	slices.SortStableFunc(x.dirs, func(a, b *tar.Header) int {
		return strings.Count(b.Name, "/") - strings.Count(a.Name, "/")
	})
	for _, h := range x.dirs {
		d, err := x.root.OpenFile(h.Name, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("open /%s: %w", h.Name, err)
		}
		err = x.attrs(d, h)
		d.Close()
		if err != nil {
			return fmt.Errorf("/%s: %w", h.Name, err)
		}
		if err := x.root.Chtimes(h.Name, h.ModTime, h.ModTime); err != nil {
			return fmt.Errorf("set times of /%s: %w", h.Name, err)
		}
	}
	if x.opts.Progress != nil {
		x.opts.Progress(x.written)
	}
	return nil
}

// readErrs remembers its reader's error, so a failed copy can tell a
// broken archive from a full disk.
type readErrs struct {
	r   io.Reader
	err error
}

func (r *readErrs) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		r.err = err
	}
	return n, err
}

// MissingUserError says that an image lacks what the guest agent needs
// from its /etc/passwd or /etc/group.
type MissingUserError struct {
	User   string
	Reason string
}

func (e *MissingUserError) Error() string {
	return fmt.Sprintf("the image has no usable user %s: %s", e.User, e.Reason)
}

// checkAgentUser checks that the tree at dir has the agent user with uid
// AgentUID in /etc/passwd and its primary group in /etc/group.
func checkAgentUser(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	pw, err := root.ReadFile("etc/passwd")
	if err != nil {
		return &MissingUserError{User: AgentUser, Reason: "it has no readable /etc/passwd"}
	}
	gid := -1
	for _, f := range colonLines(pw, 7) {
		if f[0] != AgentUser {
			continue
		}
		if f[2] != strconv.Itoa(AgentUID) {
			return &MissingUserError{User: AgentUser, Reason: fmt.Sprintf("it has uid %s in /etc/passwd, not %d", f[2], AgentUID)}
		}
		if gid, err = strconv.Atoi(f[3]); err != nil {
			return &MissingUserError{User: AgentUser, Reason: fmt.Sprintf("its gid %q in /etc/passwd is not a number", f[3])}
		}
	}
	if gid < 0 {
		return &MissingUserError{User: AgentUser, Reason: fmt.Sprintf("/etc/passwd has no line for %s (uid %d)", AgentUser, AgentUID)}
	}
	gr, err := root.ReadFile("etc/group")
	if err != nil {
		return &MissingUserError{User: AgentUser, Reason: "it has no readable /etc/group"}
	}
	for _, f := range colonLines(gr, 4) {
		if f[2] == strconv.Itoa(gid) {
			return nil
		}
	}
	return &MissingUserError{User: AgentUser, Reason: fmt.Sprintf("/etc/group has no group with gid %d, its primary group", gid)}
}

// colonLines splits the lines of a passwd-style file into n fields,
// skipping lines that do not have them.
func colonLines(b []byte, n int) [][]string {
	var out [][]string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) == n {
			out = append(out, f)
		}
	}
	return out
}
