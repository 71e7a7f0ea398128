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
// before anything follows it. Each backing file must be named by an
// absolute path that is its own real path (clean, no symbolic link in any
// component, no NUL byte, no protocol such as "nbd:" or "json:"), with
// its format recorded in the header and equal to what the file is (raw or
// qcow2, so nothing is probed), and be a regular file owned by the caller,
// not writable by others, inside one of the trusted folders; no image in
// the chain may name an external data file. A chain that fails a check
// is refused with an error wrapping ErrUntrusted. With no trusted folders
// any backing file is refused.
func Chain(path, format string, trusted []string) ([]string, error) {
	var out []string
	for depth := 0; format == "qcow2"; depth++ {
		if depth == maxChainDepth {
			return nil, fmt.Errorf("%s: backing chain deeper than %d", path, maxChainDepth)
		}
		h, err := readQcow2Header(path)
		if err != nil {
			return nil, err
		}
		if h.dataFile {
			return nil, fmt.Errorf("%w: %s names an external data file", ErrUntrusted, path)
		}
		name := h.backing
		if name == "" {
			break
		}
		refuse := func(why string) error {
			return fmt.Errorf("%w: %s names %q as its backing file: %s", ErrUntrusted, path, name, why)
		}
		if err := plainPath(name); err != nil {
			return nil, refuse(err.Error())
		}
		if err := trustedFile(name, trusted); err != nil {
			return nil, refuse(err.Error())
		}
		probed := "raw"
		if isQcow2(name) {
			probed = "qcow2"
		}
		if h.backingFormat != probed {
			return nil, refuse(fmt.Sprintf("its recorded format is %q, the file is %s", h.backingFormat, probed))
		}
		out = append(out, name)
		path = name
		format = probed
	}
	return out, nil
}

// plainPath checks that name is a path QEMU and the kernel read the same
// way as Go: absolute, clean, free of NUL bytes and protocol prefixes, and
// its own real path, so no ".." can be resolved differently after a
// symbolic link and no link can be swapped between the check and the use.
func plainPath(name string) error {
	if strings.IndexByte(name, 0) >= 0 {
		return errors.New("a NUL byte in the name")
	}
	if !filepath.IsAbs(name) || filepath.Clean(name) != name {
		return errors.New("not an absolute, clean path")
	}
	// QEMU reads "proto:..." before the first slash as a protocol; an
	// absolute path has none, but say so plainly.
	real, err := filepath.EvalSymlinks(name)
	if err != nil {
		return err
	}
	if real != name {
		return fmt.Errorf("a symbolic link on the way (it is %s)", real)
	}
	return nil
}

// trustedFile checks one backing file (its own real path) against the
// trusted folders.
func trustedFile(name string, trusted []string) error {
	inside := false
	for _, d := range trusted {
		rd, err := filepath.EvalSymlinks(d)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(rd, name); err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") {
			inside = true
			break
		}
	}
	if !inside {
		return errors.New("not inside sbx's template or snapshot cache")
	}
	fi, err := os.Lstat(name)
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

// qcow2Header is what Chain needs of a qcow2 header.
type qcow2Header struct {
	backing       string // backing file name, "" for none
	backingFormat string // from the backing format extension, "" without one
	dataFile      bool   // an external data file holds the guest data
}

// maxHeaderBytes bounds what is read of a header and its extensions
// (QEMU keeps them in the first cluster; 64 KiB is the default size).
const maxHeaderBytes = 1 << 16

// qcow2 header extension types.
const (
	extEnd           = 0
	extBackingFormat = 0xe2792aca
	extDataFile      = 0x44415441
)

// readQcow2Header reads the backing file name and format and the data
// file facts from the qcow2 image at path.
func readQcow2Header(path string) (qcow2Header, error) {
	var h qcow2Header
	f, err := os.Open(path)
	if err != nil {
		return h, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxHeaderBytes))
	if err != nil {
		return h, fmt.Errorf("%s: qcow2 header: %w", path, err)
	}
	if len(b) < qcow2V2HeaderLength || string(b[:4]) != qcow2Magic {
		return h, fmt.Errorf("%s: not a qcow2 image", path)
	}
	be := binary.BigEndian
	extStart := uint64(qcow2V2HeaderLength)
	if v := be.Uint32(b[4:8]); v >= 3 {
		if len(b) < 104 {
			return h, fmt.Errorf("%s: qcow2 header: %w", path, io.ErrUnexpectedEOF)
		}
		h.dataFile = be.Uint64(b[72:80])&qcow2IncompatData != 0
		extStart = uint64(be.Uint32(b[100:104]))
	}
	off := be.Uint64(b[8:16])
	size := be.Uint32(b[16:20])
	if off != 0 && size != 0 {
		if size > 1023 {
			return h, fmt.Errorf("%s: backing file name too long", path)
		}
		if off > uint64(len(b)) || off+uint64(size) > uint64(len(b)) {
			return h, fmt.Errorf("%s: backing file name beyond the header", path)
		}
		h.backing = string(b[off : off+uint64(size)])
	}
	// Header extensions: type, length, data padded to 8 bytes.
	for p := extStart; ; {
		if p+8 > uint64(len(b)) {
			return h, fmt.Errorf("%s: qcow2 header extensions run past the header", path)
		}
		typ, n := be.Uint32(b[p:p+4]), uint64(be.Uint32(b[p+4:p+8]))
		p += 8
		if typ == extEnd {
			break
		}
		if p+n > uint64(len(b)) {
			return h, fmt.Errorf("%s: qcow2 header extension runs past the header", path)
		}
		switch typ {
		case extBackingFormat:
			h.backingFormat = string(b[p : p+n])
		case extDataFile:
			h.dataFile = true
		}
		p += (n + 7) &^ 7
	}
	return h, nil
}
