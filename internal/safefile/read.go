package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrTooLarge is returned by ReadRegular for a file over its limit.
var ErrTooLarge = errors.New("file larger than the limit")

// ReadRegular reads the file name, opened in root (or as a plain path when
// root is nil) without following a symlink at name and without blocking on
// a FIFO, for content a guest or an image controls: anything but a regular
// file is an error, and at most max bytes are read (never a buffer sized by
// the file), a longer file being ErrTooLarge.
func ReadRegular(root *os.Root, name string, max int64) ([]byte, error) {
	flags := os.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY
	var f *os.File
	var err error
	var before os.FileInfo
	if root != nil {
		// os.Root resolves a symlink in the last element itself (inside
		// the root): refuse one, and a swap between this look and the open.
		if before, err = root.Lstat(name); err != nil {
			return nil, err
		}
		if !before.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file (%s)", name, before.Mode().Type())
		}
		f, err = root.OpenFile(name, flags, 0)
	} else {
		f, err = os.OpenFile(name, flags, 0)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", name, fi.Mode().Type())
	}
	if before != nil && !os.SameFile(before, fi) {
		return nil, fmt.Errorf("%s changed while it was opened", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: %w (%d bytes)", name, ErrTooLarge, max)
	}
	return b, nil
}
