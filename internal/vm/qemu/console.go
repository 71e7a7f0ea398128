package qemu

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/sbx-dev/sbx/internal/safefile"
)

// consoleMax caps a VM's console log: the guest writes it (root in the
// guest can write the serial port without end), so past the cap the
// newest half moves to the log's ".1" file and the log starts again.
const consoleMax = 16 << 20

// truncateConsole empties (or makes) the console log, never through a
// symbolic link.
func truncateConsole(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// capConsole keeps the console log at path under max bytes until done
// is closed, looking every interval: QEMU appends to it, so it can be
// cut under QEMU's feet. The bytes QEMU writes between the copy and the
// cut are lost, and a line says so.
func capConsole(path string, max int64, interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if err := rotateConsole(path, max); err != nil {
			return
		}
	}
}

// rotateConsole moves the newest max/2 bytes of the log at path to
// path.1 and empties the log, when it has grown past max.
func rotateConsole(path string, max int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() <= max {
		return nil
	}
	keep := max / 2
	buf := make([]byte, keep)
	n, err := f.ReadAt(buf, fi.Size()-keep)
	if err != nil && err != io.EOF {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	fmt.Fprintf(f, "[sbx: the console log passed %d MiB; its newest %d MiB are in %s.1]\n", max>>20, keep>>20, path)
	return safefile.Write(path+".1", buf[:n], 0o600)
}
