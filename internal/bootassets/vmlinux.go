package bootassets

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

// ErrNoXZPayload is returned by ExtractVmlinux when the compressed kernel
// holds no XZ stream (for example a kernel compressed with zstd or gzip).
var ErrNoXZPayload = errors.New("no xz payload in kernel image")

var xzMagic = []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}

// ExtractVmlinux writes the uncompressed ELF kernel held in the bzImage
// vmlinuz to dst. It looks for the first XZ header in the file and pipes
// the rest through `xz -dc` (trailing bytes after the stream are ignored).
// dst is written in place: callers that need atomicity write to a temp name
// and rename. It returns ErrNoXZPayload when there is no XZ stream and an
// error when the result is not an ELF file.
func ExtractVmlinux(ctx context.Context, vmlinuz, dst string) error {
	data, err := os.ReadFile(vmlinuz)
	if err != nil {
		return fmt.Errorf("read kernel image: %w", err)
	}
	off := bytes.Index(data, xzMagic)
	if off < 0 {
		return fmt.Errorf("%s: %w", vmlinuz, ErrNoXZPayload)
	}
	xz, err := exec.LookPath("xz")
	if err != nil {
		return fmt.Errorf("xz not found (install it: apt-get install xz-utils): %w", err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create vmlinux: %w", err)
	}
	defer out.Close()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, xz, "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(data[off:])
	cmd.Stdout = out
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("decompress kernel with xz: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("write vmlinux: %w", err)
	}
	f, err := elf.Open(dst)
	if err != nil {
		return fmt.Errorf("extracted kernel is not an ELF file: %w", err)
	}
	f.Close()
	return nil
}

var linuxVersionRE = regexp.MustCompile(`Linux version (\S+)`)

// KernelRelease reads the release string (as `uname -r` prints it) from a
// bzImage (the setup header's kernel_version field) or, failing that, from
// the first "Linux version" banner in the file (works for vmlinux).
func KernelRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("open kernel: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err == nil && string(hdr[0x202:0x206]) == "HdrS" {
		ptr := int64(binary.LittleEndian.Uint16(hdr[0x20E:0x210]))
		if ptr != 0 {
			buf := make([]byte, 256)
			if n, _ := f.ReadAt(buf, ptr+0x200); n > 0 {
				s := string(buf[:n])
				if i := strings.IndexAny(s, " \x00"); i > 0 {
					return s[:i], nil
				}
			}
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("read kernel: %w", err)
	}
	// Stream in chunks with overlap so the banner is found in a 60+ MB vmlinux.
	r := bufio.NewReaderSize(f, 1<<20)
	var carry []byte
	chunk := make([]byte, 1<<20)
	for {
		n, err := r.Read(chunk)
		buf := append(carry, chunk[:n]...)
		if m := linuxVersionRE.FindSubmatch(buf); m != nil && len(m[1]) > 0 && !bytes.Contains(m[1], []byte("%")) {
			return string(m[1]), nil
		}
		if len(buf) > 256 {
			carry = append([]byte(nil), buf[len(buf)-256:]...)
		} else {
			carry = buf
		}
		if err != nil {
			break
		}
	}
	return "", fmt.Errorf("no kernel release found in %s", path)
}
