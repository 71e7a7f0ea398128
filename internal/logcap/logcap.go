// Package logcap keeps a log file that something else appends to (QEMU's
// console log, the supervisor's own log) under a size: the guest can make
// either grow without end (the serial port; connections whose names are
// logged), and neither may fill the host's disk.
package logcap

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/sbx-dev/sbx/internal/safefile"
)

// Truncate empties (or makes) the log at path, never through a link.
func Truncate(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// Watch keeps the log at path under max bytes until done is closed,
// looking every interval (Rotate). Its writers must append (O_APPEND),
// so that it can be cut under their feet.
func Watch(path string, max int64, interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if err := Rotate(path, max); err != nil {
			return
		}
	}
}

// Rotate moves the newest max/2 bytes of the log at path to path.1 and
// empties the log, with a line saying so, when it has grown past max.
// What is written between the copy and the cut is lost.
func Rotate(path string, max int64) error {
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
	fmt.Fprintf(f, "[sbx: the log passed %d MiB; its newest %d MiB are in %s.1]\n", max>>20, keep>>20, path)
	return safefile.Write(path+".1", buf[:n], 0o600)
}
