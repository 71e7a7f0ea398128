package template

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// A saved-template file (SaveFile) is a tar of two entries, in this order:
//
//	sbx-template.json  savedHeader: what the template is and the sha256 of its raw image
//	image.qcow2        the shrunk ext4 image, as a compressed qcow2
const (
	savedHeaderName = "sbx-template.json"
	savedImageName  = "image.qcow2"
	savedFormat     = "sbx-template"
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
	if err := shrinkDisk(ctx, disk, raw, opts.progress()); err != nil {
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
// by Save, then stored as a compressed qcow2. out is written under a
// temporary name and renamed into place.
func SaveFile(ctx context.Context, cacheDir, disk, name, out string, opts SaveOptions) error {
	if err := checkImportName(name); err != nil {
		return err
	}
	qemuImg, err := tool("qemu-img", "qemu-utils")
	if err != nil {
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
	if err := shrinkDisk(ctx, disk, raw, progress); err != nil {
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
	qcow := filepath.Join(tmp, savedImageName)
	if err := run(ctx, qemuImg, "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, qcow); err != nil {
		return err
	}
	f := opts.From
	h := savedHeader{
		Format: savedFormat, Version: 1, Name: name, ID: id, SizeBytes: st.Size(),
		Created: time.Now().UTC().Truncate(time.Second), Source: opts.Source,
		Packages: f.Packages, Agents: f.Agents, Versions: f.Versions, Docker: f.Docker,
	}
	return writeSavedFile(out, h, qcow)
}

// writeSavedFile writes header h and the qcow2 image at qcow as out.
func writeSavedFile(out string, h savedHeader, qcow string) error {
	hb, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	img, err := os.Open(qcow)
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
	err = tw.WriteHeader(&tar.Header{Name: savedHeaderName, Mode: 0o644, Size: int64(len(hb)), ModTime: now, Typeflag: tar.TypeReg})
	if err == nil {
		_, err = tw.Write(hb)
	}
	if err == nil {
		err = tw.WriteHeader(&tar.Header{Name: savedImageName, Mode: 0o644, Size: st.Size(), ModTime: now, Typeflag: tar.TypeReg})
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
		err = f.Chmod(0o644)
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
	if h.Format != savedFormat || h.Version != 1 {
		return h, fmt.Errorf("saved template format %q version %d is not supported by this sbx", h.Format, h.Version)
	}
	if len(h.ID) != 64 || strings.Trim(h.ID, "0123456789abcdef") != "" {
		return h, fmt.Errorf("saved template: bad image id %q", h.ID)
	}
	return h, nil
}

// loadSaved makes a template of a saved-template file: the image is
// unpacked to raw and must match the header's hash, so a damaged file
// never becomes a template.
func loadSaved(ctx context.Context, cacheDir, abs string, opts ImportOptions) (Template, error) {
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
	qemuImg, err := tool("qemu-img", "qemu-utils")
	if err != nil {
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
	progress := opts.progress()
	start := time.Now()
	tmp, err := os.MkdirTemp(dir, ".tmp-load-")
	if err != nil {
		return Template{}, fmt.Errorf("create template temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintf(progress, "unpacking saved template %s (%d MiB)...\n", h.Name, h.SizeBytes>>20)
	qcow := filepath.Join(tmp, savedImageName)
	if err := extractSavedImage(abs, qcow); err != nil {
		return Template{}, fmt.Errorf("load %s: %w", abs, err)
	}
	raw := filepath.Join(tmp, "image.ext4")
	if err := run(ctx, qemuImg, "convert", "-q", "-f", "qcow2", "-O", "raw", qcow, raw); err != nil {
		return Template{}, fmt.Errorf("load %s: %w", abs, err)
	}
	os.Remove(qcow)
	st, err := os.Stat(raw)
	if err != nil {
		return Template{}, err
	}
	id, err := fileSHA256(raw)
	if err != nil {
		return Template{}, err
	}
	if id != h.ID || st.Size() != h.SizeBytes {
		return Template{}, fmt.Errorf("load %s: the image does not match its header (sha256 %s, want %s): the file is damaged", abs, id, h.ID)
	}
	m := manifest{Source: "file " + abs + "@sha256:" + id, Packages: h.Packages, Agents: h.Agents, Versions: h.Versions, Docker: h.Docker}
	t, err := commitImage(dir, opts.Name, raw, m, progress, start)
	if err != nil {
		return Template{}, err
	}
	dropOldImage(dir, old, hadOld, t, opts.InUse)
	return t, nil
}

// extractSavedImage copies the image entry of a saved-template file to
// dst.
func extractSavedImage(path, dst string) error {
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
		if th.Name != savedImageName {
			continue
		}
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, tr)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("read saved template: %w", err)
		}
		return nil
	}
}

// shrinkDisk writes the file system of the disk image disk (any format
// qemu-img reads, backing files followed) to raw, checked and shrunk to
// its data plus headroom.
func shrinkDisk(ctx context.Context, disk, raw string, progress io.Writer) error {
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
	if err := run(ctx, qemuImg, "convert", "-q", "-O", "raw", disk, raw); err != nil {
		return err
	}
	fmt.Fprintf(progress, "checking and shrinking the file system (copied in %.0fs)...\n", time.Since(t0).Seconds())
	cmd := exec.CommandContext(ctx, e2fsck, "-f", "-y", raw)
	out, err := cmd.CombinedOutput()
	// 1: errors corrected; 2: corrected, reboot wanted (meaningless here).
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && ee.ExitCode() <= 2 {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("e2fsck of the disk: %w: %s (the disk's file system is damaged beyond repair)", err, lastLines(string(out), 5))
	}
	if err := run(ctx, resize2fs, "-M", raw); err != nil {
		return err
	}
	blocks, blockSize, err := fsBlocks(ctx, dumpe2fs, raw)
	if err != nil {
		return err
	}
	used := blocks * blockSize
	size := roundUp(used+used/10+headroomBytes, 1<<20)
	if err := run(ctx, resize2fs, raw, strconv.FormatInt(size>>10, 10)+"K"); err != nil {
		return err
	}
	if err := os.Truncate(raw, size); err != nil {
		return fmt.Errorf("truncate image: %w", err)
	}
	fmt.Fprintf(progress, "file system shrunk to %d MiB (%d MiB of data)\n", size>>20, used>>20)
	return nil
}

// fsBlocks reads an ext4 image's block count and block size.
func fsBlocks(ctx context.Context, dumpe2fs, img string) (count, size int64, err error) {
	out, err := exec.CommandContext(ctx, dumpe2fs, "-h", img).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("dumpe2fs: %w", err)
	}
	for line := range strings.Lines(string(out)) {
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
