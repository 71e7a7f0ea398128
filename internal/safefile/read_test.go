package safefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadRegular(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("small", "hello")
	write("big", strings.Repeat("x", 100))
	if err := os.Symlink("small", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, r := range []*os.Root{root, nil} {
		name := func(n string) string {
			if r == nil {
				return filepath.Join(dir, n)
			}
			return n
		}
		if b, err := ReadRegular(r, name("small"), 10); err != nil || string(b) != "hello" {
			t.Errorf("small: %q %v", b, err)
		}
		if _, err := ReadRegular(r, name("big"), 10); !errors.Is(err, ErrTooLarge) {
			t.Errorf("big: %v", err)
		}
		if _, err := ReadRegular(r, name("link"), 10); err == nil {
			t.Error("followed a symlink")
		}
		done := make(chan error, 1)
		go func() { _, err := ReadRegular(r, name("fifo"), 10); done <- err }()
		select {
		case err := <-done:
			if err == nil {
				t.Error("read a FIFO")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("blocked on a FIFO")
		}
	}
}
