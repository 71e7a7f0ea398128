package bootassets

import (
	"fmt"
	"io"
	"strings"
)

// newcWriter writes the "newc" (SVR4, no CRC) cpio format the kernel reads
// for initramfs. The cpio library in go.mod cannot write device numbers, so
// the few lines are here.
type newcWriter struct {
	w   io.Writer
	ino uint32
	n   int64 // bytes written, for padding
}

// Mode type bits of a cpio entry.
const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioChar = 0o020000
)

func (c *newcWriter) write(p []byte) error {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return err
}

func (c *newcWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// entry writes one header (and the name) for a file of size bytes; for a
// regular file the caller then writes exactly size bytes with data.
func (c *newcWriter) entry(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) error {
	name = strings.TrimPrefix(name, "/")
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

// file writes a regular file whose content comes from r (size bytes).
func (c *newcWriter) file(name string, perm uint32, size int64, r io.Reader) error {
	if err := c.entry(name, cpioReg|perm, size, 0, 0); err != nil {
		return err
	}
	n, err := io.Copy(writerFunc(c.write), io.LimitReader(r, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("cpio entry %s: got %d bytes, want %d", name, n, size)
	}
	return c.pad()
}

// close writes the trailer.
func (c *newcWriter) close() error {
	c.ino = 0
	return c.entry("TRAILER!!!", 0, 0, 0, 0)
}

type writerFunc func([]byte) error

func (f writerFunc) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}
