package controlapi

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Found by the twelfth review: a supervisor that took the connection and
// never answered (stopped with SIGSTOP) held `sbx exec` forever, Ctrl-C
// included. The wait ends with the caller's ctx, and on its own after
// streamHandshake.
func TestOpenStreamFrozenSupervisor(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
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
			defer c.Close() // accepted, never answered
		}
	}()
	c := NewClient(sock)

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	if _, err := c.OpenStream(ctx, false); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a cancel took %v to end the wait", d)
	}

	saved := streamHandshake
	streamHandshake = 200 * time.Millisecond
	defer func() { streamHandshake = saved }()
	if _, err := c.OpenStream(context.Background(), false); !errors.Is(err, ErrNoAnswer) {
		t.Errorf("no answer: %v, want ErrNoAnswer", err)
	}
}
