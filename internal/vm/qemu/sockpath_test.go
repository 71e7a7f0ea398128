package qemu

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestSocketRef: the supervisor connects to the VMM's sockets only as
// sockets in their folder; a symbolic link an escaped VMM put there (to
// another host socket) is refused, and so is anything else.
func TestSocketRef(t *testing.T) {
	dir := t.TempDir()
	other := filepath.Join(dir, "other.sock")
	l, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	ref, done, err := socketRef(other)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", ref)
	done()
	if err != nil {
		t.Fatalf("dial the socket through %s: %v", ref, err)
	}
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	c.Close()

	link := filepath.Join(dir, "agent.sock")
	if err := os.Symlink(other, link); err != nil {
		t.Fatal(err)
	}
	if _, _, err := socketRef(link); err == nil {
		t.Error("a symbolic link to another socket was accepted")
	}
	file := filepath.Join(dir, "qmp.sock")
	os.WriteFile(file, nil, 0o600)
	if _, _, err := socketRef(file); err == nil {
		t.Error("a regular file was accepted")
	}
}
