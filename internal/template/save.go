package template

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/internal/disk"
)

// A saved-template file (SaveFile) is a tar of two entries, in this order:
//
//	sbx-template.json  savedHeader: what the template is and the sha256 of its raw image
//	image.ext4.gz      the shrunk ext4 image, gzip-compressed (several
//	                   gzip members, compressed in parallel)
//
// The image is plain gzip, decompressed in process: a disk image format
// (qcow2) would have root run qemu-img on an untrusted header that can
// name backing files or network sources.
const (
	savedHeaderName = "sbx-template.json"
	savedImageName  = "image.ext4.gz"
	savedFormat     = "sbx-template"
	savedVersion    = 2
)

// savedHeader is the first entry of a saved-template file.
type savedHeader struct {
	Format    string            `json:"format"`
	Version   int               `json:"version"`
	Name      string            `json:"name"`
	ID        string            `json:"id"`        // sha256 of the raw ext4 image
	SizeBytes int64             `json:"sizeBytes"` // size of the raw image
	Created   time.Time         `json:"created"`
	Source    string            `json:"source,omitempty"`
	Packages  []string          `json:"packages,omitempty"`
	Agents    []string          `json:"agents,omitempty"`
	Versions  map[string]string `json:"versions,omitempty"`
	Docker    bool              `json:"docker,omitempty"`
}

// SaveOptions describe a sandbox disk being saved.
type SaveOptions struct {
	// Source is recorded as the template's Source, e.g.
	// "sandbox NAME (TEMPLATE)".
	Source string
	// From is the template the disk was made from; the new template
	// inherits its packages, agents, versions and Docker flag.
	From Template
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
	// Replace and InUse are as in ImportOptions, for a template of the
	// same name that Save replaces.
	Replace func(old Template) error
	InUse   func(id string) bool
	// Backing lists the folders whose images the disk may name as its
	// backing file (snapshot.Backing): the disk's header was the VMM
	// user's to write, and root must not follow it anywhere else. Empty,
	// a disk with a backing file is refused.
	Backing []string
}

func (o SaveOptions) progress() io.Writer {
	if o.Progress == nil {
		return io.Discard
	}
	return o.Progress
}

// Save makes template name from the root disk of a stopped sandbox (a
// qcow2 overlay, possibly grown past its template): the disk is converted
// to a raw image, checked with e2fsck, shrunk with resize2fs to its data
// plus headroom, and committed under its content hash like a built
// template. The disk is only read; the caller makes sure no VM writes it
// meanwhile. Save holds the templates lock; a failure leaves nothing
// behind. A built-in name is refused with ErrBuiltinName; an existing
// template of the same name is replaced as opts.Replace allows.
func Save(ctx context.Context, cacheDir, disk, name string, opts SaveOptions) (Template, error) {
	if err := checkImportName(name); err != nil {
		return Template{}, err
	}
	dir := templatesDir(cacheDir)
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return Template{}, err
	}
	defer unlock()
	old, hadOld, err := replaceable(dir, ImportOptions{Name: name, Replace: opts.Replace})
	if err != nil {
		return Template{}, err
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(dir, ".tmp-save-")
	if err != nil {
		return Template{}, fmt.Errorf("create template temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	raw := filepath.Join(tmp, "image.ext4")
	if err := shrinkDisk(ctx, disk, raw, opts.Backing, opts.progress()); err != nil {
		return Template{}, err
	}
	f := opts.From
	m := manifest{Source: opts.Source, Packages: f.Packages, Agents: f.Agents, Versions: f.Versions, Docker: f.Docker}
	t, err := commitImage(dir, name, raw, m, opts.progress(), start)
	if err != nil {
		return Template{}, err
	}
	dropOldImage(dir, old, hadOld, t, opts.InUse)
	return t, nil
}

// SaveFile writes the root disk of a stopped sandbox to the file out as a
// saved-template file that LoadFile reads back as template name: shrunk as
// by Save, then gzip-compressed. out is written under a temporary name
// and renamed into place, mode 0600: the disk may hold the agent's logins
// and tokens.
func SaveFile(ctx context.Context, cacheDir, disk, name, out string, opts SaveOptions) error {
	if err := checkImportName(name); err != nil {
		return err
	}
	dir := templatesDir(cacheDir)
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	tmp, err := os.MkdirTemp(dir, ".tmp-save-")
	if err != nil {
		return fmt.Errorf("create template temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	progress := opts.progress()
	raw := filepath.Join(tmp, "image.ext4")
	if err := shrinkDisk(ctx, disk, raw, opts.Backing, progress); err != nil {
		return err
	}
	st, err := os.Stat(raw)
	if err != nil {
		return err
	}
	id, err := fileSHA256(raw)
	if err != nil {
		return err
	}
	fmt.Fprintf(progress, "compressing the image...\n")
	t0 := time.Now()
	gz := filepath.Join(tmp, savedImageName)
	if err := compressImage(ctx, raw, gz); err != nil {
		return err
	}
	if gst, err := os.Stat(gz); err == nil {
		fmt.Fprintf(progress, "image compressed to %d MiB in %.0fs\n", gst.Size()>>20, time.Since(t0).Seconds())
	}
	f := opts.From
	h := savedHeader{
		Format: savedFormat, Version: savedVersion, Name: name, ID: id, SizeBytes: st.Size(),
		Created: time.Now().UTC().Truncate(time.Second), Source: opts.Source,
		Packages: f.Packages, Agents: f.Agents, Versions: f.Versions, Docker: f.Docker,
	}
	return writeSavedFile(out, h, gz)
}

// compressChunk is how much of the image each gzip member holds.
const compressChunk = 8 << 20

// compressImage writes raw gzip-compressed to out: a gzip member per
// compressChunk, compressed on every CPU and written in order (a gzip
// reader reads the members as one stream).
func compressImage(ctx context.Context, raw, out string) error {
	in, err := os.Open(raw)
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	type chunk struct {
		in   []byte
		out  bytes.Buffer
		err  error
		done chan struct{}
	}
	workers := runtime.GOMAXPROCS(0)
	todo := make(chan *chunk)
	order := make(chan *chunk, workers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range workers {
		go func() {
			for c := range todo {
				if len(c.in) == compressChunk && allZero(c.in) {
					// Free space: common, and always the same member.
					var z []byte
					z, c.err = zeroMember()
					c.out.Write(z)
				} else {
					c.err = gzipTo(&c.out, c.in)
				}
				close(c.done)
			}
		}()
	}
	var readErr error
	go func() {
		defer close(order)
		defer close(todo)
		for ctx.Err() == nil {
			c := &chunk{in: make([]byte, compressChunk), done: make(chan struct{})}
			n, err := io.ReadFull(in, c.in)
			if n > 0 {
				c.in = c.in[:n]
				todo <- c
				order <- c
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	bw := bufio.NewWriterSize(o, 1<<20)
	var werr error
	for c := range order {
		<-c.done
		if werr == nil && c.err != nil {
			werr = c.err
		}
		if werr == nil {
			_, werr = bw.Write(c.out.Bytes())
		}
		if werr != nil {
			cancel()
		}
	}
	if werr == nil {
		werr = readErr
	}
	if werr == nil {
		werr = ctx.Err()
	}
	if werr == nil {
		werr = bw.Flush()
	}
	if cerr := o.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("compress the image: %w", werr)
	}
	return nil
}

// gzipTo writes b to w as one gzip member.
func gzipTo(w io.Writer, b []byte) error {
	zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	if err == nil {
		_, err = zw.Write(b)
	}
	if err == nil {
		err = zw.Close()
	}
	return err
}

// zeroMember is the gzip member of compressChunk zero bytes.
var zeroMember = sync.OnceValues(func() ([]byte, error) {
	var b bytes.Buffer
	err := gzipTo(&b, make([]byte, compressChunk))
	return b.Bytes(), err
})

// writeSavedFile writes header h and the compressed image at gz as out,
// mode 0600.
func writeSavedFile(out string, h savedHeader, gz string) error {
	hb, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	img, err := os.Open(gz)
	if err != nil {
		return err
	}
	defer img.Close()
	st, err := img.Stat()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	defer os.Remove(f.Name())
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	now := time.Now()
	err = tw.WriteHeader(&tar.Header{Name: savedHeaderName, Mode: 0o600, Size: int64(len(hb)), ModTime: now, Typeflag: tar.TypeReg})
	if err == nil {
		_, err = tw.Write(hb)
	}
	if err == nil {
		err = tw.WriteHeader(&tar.Header{Name: savedImageName, Mode: 0o600, Size: st.Size(), ModTime: now, Typeflag: tar.TypeReg})
	}
	if err == nil {
		_, err = io.Copy(tw, img)
	}
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Chmod(0o600)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), out)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

// readSavedHeader reads the header of the saved-template file at path.
func readSavedHeader(path string) (savedHeader, error) {
	var h savedHeader
	f, err := os.Open(path)
	if err != nil {
		return h, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	th, err := tr.Next()
	if err != nil || th.Name != savedHeaderName {
		return h, fmt.Errorf("%w: no %s first", ErrUnknownFormat, savedHeaderName)
	}
	if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&h); err != nil {
		return h, fmt.Errorf("read %s: %w", savedHeaderName, err)
	}
	if h.Format != savedFormat || h.Version != savedVersion {
		return h, fmt.Errorf("saved template format %q version %d is not supported by this sbx (it reads version %d; save the sandbox again with this sbx)", h.Format, h.Version, savedVersion)
	}
	if h.SizeBytes <= 0 || h.SizeBytes > maxImportBytes {
		return h, fmt.Errorf("saved template: bad image size %d", h.SizeBytes)
	}
	if len(h.ID) != 64 || strings.Trim(h.ID, "0123456789abcdef") != "" {
		return h, fmt.Errorf("saved template: bad image id %q", h.ID)
	}
	return h, nil
}

// loadSaved makes a template of a saved-template file: the image is
// decompressed to raw (at most the header's size, charged to the disk
// budget) and must match the header's hash, so a damaged file never
// becomes a template. No external tool reads the file.
func loadSaved(ctx context.Context, cacheDir, abs, source string, opts ImportOptions) (Template, error) {
	h, err := readSavedHeader(abs)
	if err != nil {
		return Template{}, fmt.Errorf("load %s: %w", abs, err)
	}
	if opts.Name == "" {
		opts.Name = NameFor(h.Name)
	}
	if err := checkImportName(opts.Name); err != nil {
		return Template{}, err
	}
	dir := templatesDir(cacheDir)
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return Template{}, err
	}
	defer unlock()
	old, hadOld, err := replaceable(dir, opts)
	if err != nil {
		return Template{}, err
	}
	budget, err := newBudget(dir)
	if err != nil {
		return Template{}, err
	}
	progress := opts.progress()
	start := time.Now()
	tmp, err := os.MkdirTemp(dir, ".tmp-load-")
	if err != nil {
		return Template{}, fmt.Errorf("create template temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintf(progress, "unpacking saved template %s (%d MiB)...\n", h.Name, h.SizeBytes>>20)
	raw := filepath.Join(tmp, "image.ext4")
	if err := extractSavedImage(ctx, abs, raw, h.SizeBytes, budget); err != nil {
		return Template{}, fmt.Errorf("load %s: %w", abs, err)
	}
	id, err := fileSHA256(raw)
	if err != nil {
		return Template{}, err
	}
	if id != h.ID {
		return Template{}, fmt.Errorf("load %s: the image does not match its header (sha256 %s, want %s): the file is damaged", abs, id, h.ID)
	}
	m := manifest{Source: source, Packages: h.Packages, Agents: h.Agents, Versions: h.Versions, Docker: h.Docker}
	t, err := commitImage(dir, opts.Name, raw, m, progress, start)
	if err != nil {
		return Template{}, err
	}
	dropOldImage(dir, old, hadOld, t, opts.InUse)
	return t, nil
}

// extractSavedImage decompresses the image entry of a saved-template file
// to dst, sparse (zero blocks are skipped), which must come to exactly
// size bytes; size is charged to budget first.
func extractSavedImage(ctx context.Context, path, dst string, size int64, budget *diskBudget) error {
	if err := budget.take(size); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		th, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: no %s", ErrUnknownFormat, savedImageName)
		}
		if err != nil {
			return fmt.Errorf("read saved template: %w", err)
		}
		if th.Name == savedImageName {
			break
		}
	}
	zr, err := gzip.NewReader(bufio.NewReaderSize(tr, 1<<20))
	if err != nil {
		return fmt.Errorf("read saved template: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = writeSparse(ctx, out, zr, size)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("read saved template: %w", err)
	}
	return nil
}

// writeSparse copies r to the new file out, leaving holes for zero
// blocks; r must hold exactly size bytes.
func writeSparse(ctx context.Context, out *os.File, r io.Reader, size int64) error {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		k, err := io.ReadFull(r, buf)
		if k > 0 {
			if n+int64(k) > size {
				return fmt.Errorf("the image is larger than the %d bytes its header says", size)
			}
			if allZero(buf[:k]) {
				_, werr := out.Seek(int64(k), io.SeekCurrent)
				if werr != nil {
					return werr
				}
			} else if _, werr := out.Write(buf[:k]); werr != nil {
				return werr
			}
			n += int64(k)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if n != size {
		return fmt.Errorf("the image has %d bytes, its header says %d", n, size)
	}
	return out.Truncate(size)
}

// zeroBlock is compared against by allZero.
var zeroBlock = make([]byte, 1<<20)

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// shrinkDisk writes the file system of the qcow2 disk image src (its
// backing chain followed, when every link is in backing: see disk.Chain)
// to raw, checked and shrunk to its data plus headroom. The file system is the guest's work, so the
// e2fsprogs tools that read it run as fsToolUID (see runFSTool), not as
// root; raw belongs to root again at the end.
func shrinkDisk(ctx context.Context, src, raw string, backing []string, progress io.Writer) error {
	if _, err := disk.Chain(src, "qcow2", backing); err != nil {
		return fmt.Errorf("the sandbox's disk: %w (it may have been tampered with; it is not saved)", err)
	}
	qemuImg, err := tool("qemu-img", "qemu-utils")
	if err != nil {
		return err
	}
	e2fsck, err := tool("e2fsck", "e2fsprogs")
	if err != nil {
		return err
	}
	resize2fs, err := tool("resize2fs", "e2fsprogs")
	if err != nil {
		return err
	}
	dumpe2fs, err := tool("dumpe2fs", "e2fsprogs")
	if err != nil {
		return err
	}
	fmt.Fprintf(progress, "copying the disk...\n")
	t0 := time.Now()
	if err := run(ctx, qemuImg, "convert", "-q", "-f", "qcow2", "-O", "raw", src, raw); err != nil {
		return err
	}
	fmt.Fprintf(progress, "checking and shrinking the file system (copied in %.0fs)...\n", time.Since(t0).Seconds())
	img, err := os.OpenFile(raw, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer img.Close()
	// Run by root (as sbx is to save a sandbox): the tools get the image
	// as nobody. Otherwise they already run as an unprivileged user.
	if os.Geteuid() == 0 {
		if err := img.Chown(fsToolUID, fsToolUID); err != nil {
			return fmt.Errorf("hand the image to uid %d: %w", fsToolUID, err)
		}
	}
	if err := img.Chmod(0o600); err != nil {
		return err
	}
	out, err := runFSTool(ctx, img, e2fsck, "-f", "-y", fsToolImage)
	// 1: errors corrected; 2: corrected, reboot wanted (meaningless here).
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && ee.ExitCode() <= 2 {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("e2fsck of the disk: %w: %s (the disk's file system is damaged beyond repair)", err, lastLines(string(out), 5))
	}
	if out, err := runFSTool(ctx, img, resize2fs, "-M", fsToolImage); err != nil {
		return fmt.Errorf("resize2fs -M: %w: %s", err, lastLines(string(out), 5))
	}
	out, err = runFSTool(ctx, img, dumpe2fs, "-h", fsToolImage)
	if err != nil {
		return fmt.Errorf("dumpe2fs: %w: %s", err, lastLines(string(out), 5))
	}
	blocks, blockSize, err := parseFSBlocks(string(out))
	if err != nil {
		return err
	}
	used := blocks * blockSize
	size := roundUp(used+used/10+headroomBytes, 1<<20)
	if out, err := runFSTool(ctx, img, resize2fs, fsToolImage, strconv.FormatInt(size>>10, 10)+"K"); err != nil {
		return fmt.Errorf("resize2fs: %w: %s", err, lastLines(string(out), 5))
	}
	if err := img.Truncate(size); err != nil {
		return fmt.Errorf("truncate image: %w", err)
	}
	if os.Geteuid() == 0 {
		if err := img.Chown(0, 0); err != nil {
			return fmt.Errorf("take the image back: %w", err)
		}
	}
	fmt.Fprintf(progress, "file system shrunk to %d MiB (%d MiB of data)\n", size>>20, used>>20)
	return nil
}

// fsToolUID is the user (nobody) the e2fsprogs tools run as on a guest's
// file system: a crafted file system that exploits one of them gets no
// more than that user has.
const fsToolUID = 65534

// fsToolImage is how a tool run by runFSTool names the image: its
// descriptor 3, reopened through /proc, so the image's folder (the
// templates cache, 0700 root) need not be open to fsToolUID.
const fsToolImage = "/dev/fd/3"

// fsToolMemory caps the address space of a tool run by runFSTool.
const fsToolMemory = 8 << 30

// runFSTool runs prog with args as fsToolUID (its group too, no
// supplementary groups; when sbx is not root, as its own user), img as
// descriptor 3, a minimal environment, no core dumps and at most
// fsToolMemory of address space (set by util-linux's prlimit before prog
// starts; without prlimit, right after), and returns its combined output.
// img must belong to the user the tool runs as.
func runFSTool(ctx context.Context, img *os.File, prog string, args ...string) ([]byte, error) {
	limits := []string{fmt.Sprintf("--as=%d", fsToolMemory), "--core=0"}
	prlimit, perr := tool("prlimit", "util-linux")
	if perr == nil {
		args = append(append(append(limits, "--"), prog), args...)
		prog = prlimit
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.ExtraFiles = []*os.File{img}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: fsToolUID, Gid: fsToolUID, Groups: []uint32{}}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if perr != nil {
		unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_AS, &unix.Rlimit{Cur: fsToolMemory, Max: fsToolMemory}, nil) //nolint:errcheck // best effort
		unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_CORE, &unix.Rlimit{}, nil)                                   //nolint:errcheck // best effort
	}
	err := cmd.Wait()
	if err != nil && ctx.Err() != nil {
		return out.Bytes(), ctx.Err()
	}
	return out.Bytes(), err
}

// parseFSBlocks reads an ext4 image's block count and block size from
// the output of dumpe2fs -h.
func parseFSBlocks(out string) (count, size int64, err error) {
	for line := range strings.Lines(out) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, perr := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch strings.TrimSpace(k) {
		case "Block count":
			count, err = n, perr
		case "Block size":
			size = n
			if perr != nil {
				err = perr
			}
		}
	}
	if err == nil && (count == 0 || size == 0) {
		err = errors.New("no block count or size")
	}
	if err != nil {
		return 0, 0, fmt.Errorf("dumpe2fs output: %w", err)
	}
	return count, size, nil
}

// tool finds a program on PATH or in the sbin folders, which a user's PATH
// may lack.
func tool(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install it with `apt-get install %s`", name, pkg)
}

// run runs a tool and includes its output in the error.
func run(ctx context.Context, prog string, args ...string) error {
	out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(prog), args[0], err, lastLines(string(out), 5))
	}
	return nil
}
