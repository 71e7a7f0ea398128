// Package disk creates the per-sandbox copy-on-write disks: qcow2 overlays
// backed by an immutable template image, made with qemu-img.
package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrTooSmall is returned when the requested size is below the backing
// image's size.
var ErrTooSmall = errors.New("disk size below the template's size")

// CreateOverlay creates path as a sparse qcow2 overlay of backing (format
// backingFormat, "raw" or "qcow2") with a virtual size of sizeBytes. It
// fails if path exists. The backing image is never written; the header
// names it by its real path.
func CreateOverlay(ctx context.Context, qemuImg, backing, backingFormat, path string, sizeBytes int64) error {
	// The header records the backing file's real path: Chain accepts
	// nothing else.
	real, err := filepath.EvalSymlinks(backing)
	if err != nil {
		return fmt.Errorf("template image: %w", err)
	}
	if real, err = filepath.Abs(real); err != nil {
		return fmt.Errorf("template image: %w", err)
	}
	backing = real
	st, err := os.Stat(backing)
	if err != nil {
		return fmt.Errorf("template image: %w", err)
	}
	if backingFormat == "raw" && sizeBytes < st.Size() {
		return fmt.Errorf("%w: %d bytes requested, template is %d bytes", ErrTooSmall, sizeBytes, st.Size())
	}
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("create disk %s: %w", path, os.ErrExist)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2",
		"-o", "backing_file="+strings.ReplaceAll(backing, ",", ",,")+",backing_fmt="+backingFormat,
		path, strconv.FormatInt(sizeBytes, 10))
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		os.Remove(path)
		return fmt.Errorf("qemu-img create: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
