package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrUntrusted is returned by Chain for an image whose header names a
// file QEMU would open that is not one of sbx's own images: a disk's
// header is written by whoever can write the disk (the unprivileged VMM
// user), so root must not follow it anywhere else.
var ErrUntrusted = errors.New("disk names a file outside sbx's images")

// maxChainDepth bounds a backing chain.
const maxChainDepth = 16

// qcow2 header facts (QEMU's docs/interop/qcow2.txt).
const (
	qcow2Magic          = "QFI\xfb"
	qcow2IncompatData   = 1 << 2 // an external data file holds the guest data
	qcow2V2HeaderLength = 72
)

// Chain lists the backing files of the image at path (format "qcow2" or
// "raw"), nearest first, as QEMU will open them, and checks every link
// before anything follows it: each backing file must be a regular file,
// owned by the caller, not writable by others, inside one of the folders
// trusted (after symbolic links are resolved), named by a plain path (no
// protocol such as "nbd:" or "json:"); no image in the chain may name an
// external data file. A chain that fails a check is refused with an
// error wrapping ErrUntrusted. With no trusted folders any backing file
// is refused.
func Chain(path, format string, trusted []string) ([]string, error) {
	var out []string
	for depth := 0; format == "qcow2"; depth++ {
		if depth == maxChainDepth {
			return nil, fmt.Errorf("%s: backing chain deeper than %d", path, maxChainDepth)
		}
		name, err := qcow2Backing(path)
		if err != nil {
			return nil, err
		}
		if name == "" {
			break
		}
		// QEMU reads "proto:..." before the first slash as a protocol.
		if i := strings.IndexByte(name, ':'); i >= 0 && !strings.Contains(name[:i], "/") {
			return nil, fmt.Errorf("%w: %s names %q as its backing file, not a plain path", ErrUntrusted, path, name)
		}
		if !filepath.IsAbs(name) {
			name = filepath.Join(filepath.Dir(path), name)
		}
		if err := trustedFile(name, trusted); err != nil {
			return nil, fmt.Errorf("%w: %s names %q as its backing file: %v", ErrUntrusted, path, name, err)
		}
		out = append(out, name)
		path = name
		format = "raw"
		if isQcow2(name) {
			format = "qcow2"
		}
	}
	return out, nil
}

// trustedFile checks one backing file against the trusted folders.
func trustedFile(name string, trusted []string) error {
	real, err := filepath.EvalSymlinks(name)
	if err != nil {
		return err
	}
	inside := false
	for _, d := range trusted {
		rd, err := filepath.EvalSymlinks(d)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(rd, real); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && rel != "." {
			inside = true
			break
		}
	}
	if !inside {
		return errors.New("not inside sbx's template or snapshot cache")
	}
	fi, err := os.Lstat(real)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return errors.New("writable by others")
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("owned by uid %d, not by uid %d", st.Uid, os.Geteuid())
	}
	return nil
}

func isQcow2(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	return err == nil && string(magic[:]) == qcow2Magic
}

// qcow2Backing reads the backing file name from a qcow2 header ("" for
// none) and refuses an image with an external data file.
func qcow2Backing(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var h [qcow2V2HeaderLength + 8]byte
	n, err := io.ReadFull(f, h[:])
	if err != nil && !(errors.Is(err, io.ErrUnexpectedEOF) && n >= qcow2V2HeaderLength) {
		return "", fmt.Errorf("%s: qcow2 header: %w", path, err)
	}
	if string(h[:4]) != qcow2Magic {
		return "", fmt.Errorf("%s: not a qcow2 image", path)
	}
	if v := binary.BigEndian.Uint32(h[4:8]); v >= 3 {
		if n < len(h) {
			return "", fmt.Errorf("%s: qcow2 header: %w", path, io.ErrUnexpectedEOF)
		}
		if binary.BigEndian.Uint64(h[72:80])&qcow2IncompatData != 0 {
			return "", fmt.Errorf("%w: %s names an external data file", ErrUntrusted, path)
		}
	}
	off := binary.BigEndian.Uint64(h[8:16])
	size := binary.BigEndian.Uint32(h[16:20])
	if off == 0 || size == 0 {
		return "", nil
	}
	if size > 1023 {
		return "", fmt.Errorf("%s: backing file name too long", path)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("%s: backing file name: %w", path, err)
	}
	return string(name), nil
}
