package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// A rule change reaches a kept-alive terminated connection at its next
// request.
func TestPolicyChangeOnKeptAliveTerminated(t *testing.T) {
	var deny atomic.Bool
	allow := allowHosts("api.test")
	e := newEnv(t, envOptions{
		intercept: interceptAPI,
		decide: func(ctx context.Context, tg Target) Decision {
			if deny.Load() {
				return Decision{Rule: "deny api.test", Hint: "sbx policy rm network --resource api.test"}
			}
			return allow(ctx, tg)
		},
	})
	c := e.client(proxyPool, false)
	u := fmt.Sprintf("https://api.test:%d/live", port(t, e.up.tls))
	if resp, _ := get(t, c, u); resp.StatusCode != http.StatusOK {
		t.Fatalf("before: %d", resp.StatusCode)
	}
	deny.Store(true)
	resp, body := get(t, c, u)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("after deny: %d %q, want 403", resp.StatusCode, body)
	}
	if n := len(e.Dials()); n != 1 {
		t.Errorf("dials = %d, want 1 (one kept-alive connection)", n)
	}
}

// Cancelling Serve's context ends open tunnels and Serve returns.
func TestServeCancelClosesTunnels(t *testing.T) {
	e := newEnv(t, envOptions{})
	p, err := New(e.p.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, l) }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT api.test:%d HTTP/1.1\r\nHost: x\r\n\r\n", port(t, e.up.tls))
	buf := make([]byte, 64)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("tunnel not closed: %v", err)
	}
}
