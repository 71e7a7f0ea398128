package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/policy"
)

// Found by the third outside review; fails on the code before its fix.
// With the real dialer and the real policy (allow-all, which
// "never" reaches local addresses), a forward-proxy request for
// http://[::%25x]:PORT/ reaches a server on the host's loopback: "::%x" is
// not special to the policy (zoned addresses fall outside every prefix),
// and connect(2) to the unspecified address lands on loopback.
func TestZonedUnspecifiedNeverReachesLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "host loopback service")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	set, err := policy.Compile(policy.File{Version: 1, Default: policy.PresetAllowAll})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Decide: func(_ context.Context, tg Target) Decision {
		var d policy.Decision
		if len(tg.IPs) == 0 {
			d = set.Evaluate(policy.Request{Host: tg.Host, Port: tg.Port})
		}
		for _, ip := range tg.IPs {
			if d = set.Evaluate(policy.Request{Host: tg.Host, IP: ip, Port: tg.Port}); !d.Allow {
				break
			}
		}
		return Decision{Allow: d.Allow, Reason: d.Reason}
	}})
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, pl) }()
	defer func() { cancel(); <-done; p.Close() }()

	// The reference: the plain loopback literal is refused. Raw request
	// lines: Go's own client drops the zone before sending.
	for _, hp := range []string{fmt.Sprintf("[::1]:%d", port), fmt.Sprintf("[::%%25x]:%d", port)} {
		c, err := net.Dial("tcp", pl.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", hp, hp)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", hp, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("GET http://%s/ through the proxy under allow-all: %d %q", hp, resp.StatusCode, b)
		}
	}
}
