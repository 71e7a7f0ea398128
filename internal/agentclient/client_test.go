package agentclient

import (
	"archive/tar"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"github.com/sbx-dev/sbx/api/agentapi"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeGuest serves streams on a yamux server with handle.
func fakeGuest(t *testing.T, handle func(s net.Conn)) net.Conn {
	t.Helper()
	host, guest := net.Pipe()
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	sess, err := yamux.Server(guest, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			s, err := sess.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer s.Close(); handle(s) })
		}
	})
	t.Cleanup(func() { sess.Close(); wg.Wait() })
	return host
}

func TestDialVersionMismatch(t *testing.T) {
	conn := fakeGuest(t, func(s net.Conn) {
		var req agentapi.Request
		if err := agentapi.ReadJSON(s, agentapi.FrameRequest, &req); err != nil {
			return
		}
		agentapi.WriteJSON(s, agentapi.FrameResponse, agentapi.Response{
			Code: agentapi.CodeVersion, Error: "version", Hello: &agentapi.HelloResponse{ProtocolVersion: 99},
		})
	})
	_, err := Dial(t.Context(), conn, nil)
	if !errors.Is(err, ErrVersionMismatch) {
		t.Fatalf("dial: got %v, want ErrVersionMismatch", err)
	}
	t.Logf("error text: %v", err)
}

// TestCopyOutMaliciousGuest: a guest that sends "link -> <outside>" and
// then "link/passwd" cannot write outside the destination.
func TestCopyOutMaliciousGuest(t *testing.T) {
	outside := t.TempDir()
	for _, target := range []string{outside, "/"} {
		conn := fakeGuest(t, func(s net.Conn) {
			var req agentapi.Request
			if err := agentapi.ReadJSON(s, agentapi.FrameRequest, &req); err != nil {
				return
			}
			if req.Op == agentapi.OpHello {
				agentapi.WriteJSON(s, agentapi.FrameResponse, agentapi.Response{OK: true, Hello: &agentapi.HelloResponse{ProtocolVersion: agentapi.ProtocolVersion}})
				return
			}
			agentapi.WriteJSON(s, agentapi.FrameResponse, agentapi.Response{OK: true})
			fw := agentapi.NewFrameWriter(s)
			dw := agentapi.NewDataWriter(fw)
			tw := tar.NewWriter(dw)
			tw.WriteHeader(&tar.Header{Name: "tree/", Typeflag: tar.TypeDir, Mode: 0o755})
			tw.WriteHeader(&tar.Header{Name: "tree/link", Typeflag: tar.TypeSymlink, Linkname: target})
			body := "root::0:0::/:/bin/sh\n"
			name := "tree/link/passwd"
			if target == "/" {
				rel, _ := filepath.Rel("/", outside)
				name = "tree/link/" + rel + "/passwd"
			}
			tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
			tw.Write([]byte(body))
			tw.Close()
			dw.Close()
			// Drain until the host closes.
			io.Copy(io.Discard, s)
		})
		c, err := Dial(t.Context(), conn, nil)
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.OpenStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "out")
		err = CopyOut(t.Context(), s, "/tree", dst)
		c.Close()
		if err == nil {
			t.Fatalf("link to %s: copy-out succeeded, want an error", target)
		}
		t.Logf("link to %s: %v", target, err)
		if _, err := os.Lstat(filepath.Join(outside, "passwd")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("link to %s: file written outside the destination", target)
		}
	}
}
