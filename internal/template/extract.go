package template

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/sbx-dev/sbx/internal/safefile"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
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
	// Budget, when set, is charged for everything written (see
	// diskBudget); running out stops the extraction.
	Budget *diskBudget
}

// extractTar writes the tar stream r, one layer without whiteouts, into
// the existing folder dir; see flattenLayers for the rules.
func extractTar(r io.Reader, dir string, opts extractOptions) error {
	x, err := newExtractor(dir, opts, nil)
	if err != nil {
		return err
	}
	defer x.root.Close()
	tr := tar.NewReader(r)
	for idx := 0; ; idx++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return &sourceError{fmt.Errorf("read archive: %w", err)}
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return err
		}
		if err := x.entry(name, hdr, tr, entryPos{0, idx}); err != nil {
			return err
		}
	}
	return x.finish()
}

// flattenLayers writes the file system of an image's layers (lowest
// first) into the existing folder dir, as docker would apply them one
// after the other. Like mutate.Extract, it reads the layers from the top
// down and keeps the first entry of each name; whiteouts (".wh.NAME") and
// opaque markers (".wh..wh..opq") hide the names below them in lower
// layers, and a non-folder hides everything below its name. Names are
// cleaned (leading "/" and "./" dropped) before any of that, so one name
// cannot be spelled two ways; names with ".." components are rejected
// with ErrUnsafeEntry.
//
// Every entry is written through an os.Root, so no name, symbolic link or
// hard link can reach outside dir. Regular files, folders, symbolic and
// hard links, FIFOs and (with Owners) device nodes are created with their
// modes, owners, modification times and extended attributes. An entry
// below a name that is not a folder in the tree (a symbolic link, even an
// absolute one, or a file of an upper layer) is skipped: in the image
// that name replaced the folder the entry was in. A hard link keeps the
// content its target had when the link's layer was applied: a target
// that an upper layer deleted or replaced is copied from the layers.
func flattenLayers(ctx context.Context, layers []v1.Layer, dir string, opts extractOptions) error {
	x, err := newExtractor(dir, opts, layers)
	if err != nil {
		return err
	}
	defer x.root.Close()
	seen := map[string]bool{} // name -> hides the names below it
	opaque := map[string]bool{}
	hidden := func(m map[string]bool, name string) bool {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if m[d] {
				return true
			}
		}
		return false
	}
	for i := len(layers) - 1; i >= 0; i-- {
		layerOpaque := map[string]bool{}
		err := x.scanLayer(i, func(idx int, name string, hdr *tar.Header, body io.Reader) (bool, error) {
			if err := ctx.Err(); err != nil {
				return false, err
			}
			base, parent := path.Base(name), path.Dir(name)
			if base == whiteoutOpaque {
				layerOpaque[parent] = true
				return true, nil
			}
			tomb := strings.HasPrefix(base, whiteoutPrefix)
			if tomb {
				name = path.Join(parent, strings.TrimPrefix(base, whiteoutPrefix))
			}
			if _, ok := seen[name]; ok && !tomb {
				return true, nil
			}
			if hidden(seen, name) || hidden(opaque, name) {
				return true, nil
			}
			seen[name] = tomb || hdr.Typeflag != tar.TypeDir
			if tomb {
				return true, nil
			}
			return true, x.entry(name, hdr, body, entryPos{i, idx})
		})
		if err != nil {
			return err
		}
		for d := range layerOpaque {
			opaque[d] = true
		}
	}
	return x.finish()
}

// Whiteout names of the OCI image layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

func newExtractor(dir string, opts extractOptions, layers []v1.Layer) (*extractor, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open extraction root: %w", err)
	}
	return &extractor{root: root, opts: opts, layers: layers, lastReport: time.Now(),
		isDir: map[string]bool{}, from: map[string]int{}}, nil
}

type extractor struct {
	root   *os.Root
	opts   extractOptions
	layers []v1.Layer
	// from is the layer each non-folder name of the tree came from.
	from map[string]int
	// dirs are the folders seen, whose attributes are set at the end
	// (deepest first), once nothing more is written into them.
	dirs []*tar.Header
	// links are hard links whose target did not exist yet.
	links []pendingLink
	// isDir holds the names known to be folders (never replaced: nothing
	// is removed during an extraction).
	isDir      map[string]bool
	written    int64
	lastReport time.Time
}

// entryCost is what an entry is charged besides its content: an inode
// and its share of a folder block.
const entryCost = 512

// charge takes n bytes of the budget.
func (x *extractor) charge(n int64) error { return x.opts.Budget.take(n) }

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

// entry writes the entry hdr (its cleaned name is name; pos says where
// it is in the layers) unless the tree already has the name.
func (x *extractor) entry(name string, hdr *tar.Header, body io.Reader, pos entryPos) error {
	if name == "." {
		return nil // the root keeps the mode pack gives it
	}
	if err := x.parent(name); err != nil {
		if errors.Is(err, errShadowed) {
			return nil
		}
		return err
	}
	cost := int64(entryCost)
	for k, v := range hdr.PAXRecords {
		cost += int64(len(k) + len(v))
	}
	if err := x.charge(cost); err != nil {
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
		x.isDir[name] = true
		h := *hdr
		h.Name = name
		x.dirs = append(x.dirs, &h)
		return nil
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old archives still use TypeRegA
		if x.exists(name) {
			return nil
		}
		x.from[name] = pos.layer
		return x.file(name, hdr, body)
	case tar.TypeSymlink:
		if x.exists(name) {
			return nil
		}
		x.from[name] = pos.layer
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
		target, err := entryName(hdr.Linkname)
		if err != nil {
			return err
		}
		if x.exists(name) {
			return nil
		}
		x.from[name] = pos.layer
		h := *hdr
		h.Name = name
		// A target written from an upper layer replaced the one the
		// link was made to: wait, and copy that one at the end.
		if l, ok := x.from[target]; ok && l > pos.layer {
			x.links = append(x.links, pendingLink{&h, pos})
			return nil
		}
		if err := x.link(hdr, name); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				x.links = append(x.links, pendingLink{&h, pos})
				return nil
			}
			return err
		}
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if x.exists(name) {
			return nil
		}
		x.from[name] = pos.layer
		return x.node(hdr, name)
	}
	return nil // pax headers and other metadata
}

// file writes the regular file name with hdr's content (from body) and
// attributes.
func (x *extractor) file(name string, hdr *tar.Header, body io.Reader) error {
	if err := x.charge(roundUp(hdr.Size, 4096)); err != nil {
		return err
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("create /%s: %w", name, err)
	}
	src := &readErrs{r: io.LimitReader(body, hdr.Size)}
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
}

// errShadowed says an entry lies below a name that is not a folder.
var errShadowed = errors.New("shadowed")

// parent makes sure name's parent folders exist (mode 0755 for folders the
// archive did not list, as container runtimes do). Each existing ancestor
// is looked at without following it: one that is not a folder (a file or
// a symbolic link, relative or absolute) was put there by the same or an
// upper layer, since the stream lists upper layers first, and in the
// image it replaces the folder the entry came from, so the entry is
// shadowed (errShadowed). mutate.Extract already drops most such entries;
// this catches the ones it misses (names it spells differently, such as
// "/lib/x" under "lib").
func (x *extractor) parent(name string) error {
	dir := path.Dir(name)
	if dir == "." || x.isDir[dir] {
		return nil
	}
	for i := 0; ; {
		j := strings.IndexByte(dir[i:], '/')
		p := dir
		if j >= 0 {
			p = dir[:i+j]
		}
		if !x.isDir[p] {
			fi, err := x.root.Lstat(p)
			switch {
			case err == nil && fi.IsDir():
			case err == nil:
				return errShadowed
			case errors.Is(err, fs.ErrNotExist):
				if err := x.charge(entryCost); err != nil {
					return err
				}
				if err := x.root.Mkdir(p, 0o755); err != nil {
					return fmt.Errorf("create /%s: %w", p, err)
				}
			default:
				return fmt.Errorf("/%s: %w", p, err)
			}
			x.isDir[p] = true
		}
		if j < 0 {
			return nil
		}
		i += j + 1
	}
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
	// A link may wait for another link: retry while that makes progress.
	// A link whose target is missing, or came from a layer above the
	// link's, gets the target's old content (materialise).
	pending := x.links
	for len(pending) > 0 {
		var again []pendingLink
		var lastErr error
		for _, l := range pending {
			target, _ := entryName(l.hdr.Linkname)
			if from, ok := x.from[target]; ok && from > l.pos.layer {
				again = append(again, l)
				continue
			}
			if err := x.link(l.hdr, l.hdr.Name); err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					return err
				}
				again, lastErr = append(again, l), err
			}
		}
		if len(again) == len(pending) {
			if x.layers == nil {
				if lastErr == nil {
					lastErr = fmt.Errorf("hard link /%s: its target was replaced", again[0].hdr.Name)
				}
				return lastErr
			}
			if err := x.materialise(again); err != nil {
				return err
			}
			break
		}
		pending = again
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

// maxUserFile caps what checkAgentUser reads of /etc/passwd and /etc/group.
const maxUserFile = 1 << 20

// readTreeFile reads the regular file name in the tree root. Symbolic
// links are resolved by hand inside the tree, as the guest will see them
// (an absolute target starts at the tree's root, ".." stops there); what
// they lead to must be a regular file of at most max bytes: a device
// node, FIFO or socket the image made is refused without being read.
func readTreeFile(root *os.Root, name string, max int64) ([]byte, error) {
	for hops := 0; ; hops++ {
		fi, err := root.Lstat(name)
		if err != nil {
			return nil, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("/%s is not a regular file (%s)", name, fi.Mode().Type())
			}
			break
		}
		if hops == 40 {
			return nil, fmt.Errorf("/%s: too many levels of symbolic links", name)
		}
		target, err := root.Readlink(name)
		if err != nil {
			return nil, err
		}
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(name), target)
		}
		name = strings.TrimPrefix(path.Clean("/"+target), "/")
	}
	b, err := safefile.ReadRegular(root, name, max)
	if errors.Is(err, safefile.ErrTooLarge) {
		return nil, fmt.Errorf("/%s is larger than %d KiB", name, max>>10)
	}
	if err != nil {
		return nil, fmt.Errorf("/%w", err)
	}
	return b, nil
}

// checkAgentUser checks that the tree at dir has the agent user with uid
// AgentUID in /etc/passwd and its primary group in /etc/group. Both are
// read with readTreeFile.
func checkAgentUser(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	pw, err := readTreeFile(root, "etc/passwd", maxUserFile)
	if err != nil {
		return &MissingUserError{User: AgentUser, Reason: "it has no readable /etc/passwd: " + err.Error()}
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
	gr, err := readTreeFile(root, "etc/group", maxUserFile)
	if err != nil {
		return &MissingUserError{User: AgentUser, Reason: "it has no readable /etc/group: " + err.Error()}
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

// materialise makes the hard links whose target is not in the tree, or
// not the version the link was made to: an upper layer deleted or
// replaced the target after the link's layer made the link. Docker
// applies layers in order, so the link kept the target's inode and
// content; the flattened tree no longer has that content, so it is read
// again from the layers: the last entry of the target's name before the
// link in the link's layer, else the topmost one in a lower layer. The
// first link to a target becomes a copy of it, the others hard links to
// that copy. A target that did not exist when the link was made (a broken
// image) is an error, as it is for docker.
func (x *extractor) materialise(links []pendingLink) error {
	made := map[entryPos]string{}
	for _, l := range links {
		pos, src, err := x.findTarget(l)
		if err != nil {
			return err
		}
		if first, ok := made[pos]; ok {
			if err := x.root.Link(first, l.hdr.Name); err != nil {
				return fmt.Errorf("create hard link /%s to /%s: %w", l.hdr.Name, first, err)
			}
			continue
		}
		if err := x.copyEntry(l.hdr.Name, pos, src); err != nil {
			return err
		}
		made[pos] = l.hdr.Name
	}
	return nil
}

// entryPos is an entry of a layer: the layer's index (lowest first) and
// the entry's index in its tar.
type entryPos struct{ layer, index int }

// pendingLink is a hard link (Name cleaned) waiting for its target, and
// where it is in the layers.
type pendingLink struct {
	hdr *tar.Header
	pos entryPos
}

// scanLayer calls fn with every entry of layer i and its cleaned name
// until fn returns false. A name with ".." components is an error
// (ErrUnsafeEntry). The layer is read to its end, so its digest is
// checked.
func (x *extractor) scanLayer(i int, fn func(idx int, name string, h *tar.Header, body io.Reader) (bool, error)) error {
	rc, err := x.layers[i].Uncompressed()
	if err != nil {
		return &sourceError{fmt.Errorf("read layer %d: %w", i+1, err)}
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for idx := 0; ; idx++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return &sourceError{fmt.Errorf("read layer %d: %w", i+1, err)}
		}
		name, err := entryName(h.Name)
		if err != nil {
			return err
		}
		more, err := fn(idx, name, h, tr)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return &sourceError{fmt.Errorf("read layer %d: %w", i+1, err)}
	}
	return nil
}

// findTarget finds the entry that gave link l's target its content: see
// materialise. Links to links are followed.
func (x *extractor) findTarget(l pendingLink) (entryPos, *tar.Header, error) {
	target, _ := entryName(l.hdr.Linkname)
	layer, before := l.pos.layer, l.pos.index
	for hops := 0; hops < 16; hops++ {
		var found *tar.Header
		var pos entryPos
		gone := false
		for i := layer; i >= 0 && found == nil && !gone; i-- {
			err := x.scanLayer(i, func(idx int, name string, e *tar.Header, _ io.Reader) (bool, error) {
				if i == layer && idx >= before {
					return false, nil
				}
				switch {
				case name == target:
					found, pos = e, entryPos{i, idx}
				case name == path.Join(path.Dir(target), whiteoutPrefix+path.Base(target)) ||
					path.Base(name) == whiteoutOpaque && strings.HasPrefix(target, path.Dir(name)+"/"):
					gone = true // removed by this layer: lower ones do not count
				}
				return true, nil
			})
			if err != nil {
				return entryPos{}, nil, err
			}
		}
		if found == nil {
			return entryPos{}, nil, fmt.Errorf("create hard link /%s to /%s: the target does not exist in the image", l.hdr.Name, target)
		}
		if found.Typeflag != tar.TypeLink {
			return pos, found, nil
		}
		target, _ = entryName(found.Linkname)
		layer, before = pos.layer, pos.index
	}
	return entryPos{}, nil, fmt.Errorf("create hard link /%s: too many links to links", l.hdr.Name)
}

// copyEntry writes the entry src at pos of the layers as name.
func (x *extractor) copyEntry(name string, pos entryPos, src *tar.Header) error {
	h := *src
	h.Name = name
	switch src.Typeflag {
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old archives still use TypeRegA
		return x.scanLayer(pos.layer, func(idx int, _ string, _ *tar.Header, body io.Reader) (bool, error) {
			if idx < pos.index {
				return true, nil
			}
			return false, x.file(name, &h, body)
		})
	case tar.TypeSymlink:
		if err := x.root.Symlink(src.Linkname, name); err != nil {
			return fmt.Errorf("create link /%s: %w", name, err)
		}
		if x.opts.Owners {
			return x.root.Lchown(name, src.Uid, src.Gid)
		}
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return x.node(&h, name)
	}
	return fmt.Errorf("create hard link /%s: its target is a %c entry", name, src.Typeflag)
}

// ErrNoSpace is returned when an import would write more than its
// budget: see diskBudget.
var ErrNoSpace = errors.New("not enough disk space")

// Limits on what one import writes to the host.
const (
	// maxImportBytes caps what one import writes, whatever the free space.
	maxImportBytes = 64 << 30
	// keepFreeBytes is the free space an import leaves on the file system
	// of the templates.
	keepFreeBytes = 2 << 30
)

// diskBudget caps what an import writes to the host (an archive's
// content, decompressed files, extracted trees, the packed image), so a
// hostile or broken image (a gzip bomb, a layer of huge sparse files)
// cannot fill the disk: at most maxImportBytes, and never so much that
// less than keepFreeBytes would stay free on the file system of dir when
// the import began. A nil budget allows everything.
type diskBudget struct {
	dir         string
	free, limit int64
	used        int64
}

// newBudget measures the free space of dir.
func newBudget(dir string) (*diskBudget, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, fmt.Errorf("free space of %s: %w", dir, err)
	}
	free := int64(st.Bavail) * st.Bsize
	return &diskBudget{dir: dir, free: free, limit: max(0, min(maxImportBytes, free-keepFreeBytes))}, nil
}

// take charges n bytes, failing with ErrNoSpace once the limit is passed.
func (b *diskBudget) take(n int64) error {
	if b == nil {
		return nil
	}
	b.used += n
	if b.used <= b.limit {
		return nil
	}
	if b.limit < maxImportBytes {
		return fmt.Errorf("%w: the import needs more than the %d MiB that can be written to %s (%d MiB free, sbx leaves %d GiB free)",
			ErrNoSpace, b.limit>>20, b.dir, b.free>>20, keepFreeBytes>>30)
	}
	return fmt.Errorf("%w: the import would write more than %d GiB, the most sbx writes for one image", ErrNoSpace, maxImportBytes>>30)
}

// writer returns w charging this budget for every byte written.
func (b *diskBudget) writer(w io.Writer) io.Writer { return &budgetWriter{w: w, b: b} }

type budgetWriter struct {
	w io.Writer
	b *diskBudget
}

func (w *budgetWriter) Write(p []byte) (int, error) {
	if err := w.b.take(int64(len(p))); err != nil {
		return 0, err
	}
	return w.w.Write(p)
}
