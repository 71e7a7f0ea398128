package proxy

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// terminated opens CONNECT host:443 and completes TLS (HTTP/1.1) with the
// proxy's leaf, as a guest trusting the sandbox CA does.
func (e *reviewEnv) terminated(t *testing.T, host string) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n", host, host)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: proxyPool, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc, bufio.NewReader(tc)
}

// Found by the third outside review, and again by the fourth: an
// upgraded stream from a host with secrets cannot be scanned (its
// messages may be compressed or fragmented, its status line is the
// server's), so the upgrade is refused, and the upstream connection it
// was handed is closed, not left open.
func TestUpgradeToSecretHostRefused(t *testing.T) {
	var open atomic.Int64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		open.Add(1)
		defer open.Add(-1)
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching for %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", r.Header.Get("X-Token"))
		fmt.Fprintf(brw, "you sent %s;", r.Header.Get("X-Token"))
		brw.Flush()
		_, _ = io.Copy(io.Discard, brw)
	})
	e := newReviewEnv(t, handler, false)
	placeholder := e.custom(t, reviewValue)
	tc, br := e.terminated(t, "api.test")
	for range 5 {
		fmt.Fprintf(tc, "GET /ws HTTP/1.1\r\nHost: api.test\r\nX-Token: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", placeholder)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusSwitchingProtocols || strings.Contains(resp.Status+string(b), reviewValue) {
			t.Fatalf("upgrade to a host with a secret: %q %q", resp.Status, b)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := open.Load(); n > 0 {
		t.Errorf("%d upgraded upstream connections left open", n)
	}
}

// Found by the third outside review; fails on the code before its fix.
// ModifyResponse decodes only the first Content-Encoding field
// (Header.Get) and then deletes them all. A response coded twice (two
// "Content-Encoding: gzip" fields, what a compressing middleware in front
// of an already compressing app sends; or "identity" then "gzip") is
// scrubbed after one layer, still compressed, and reaches the guest
// without any Content-Encoding: the guest decompresses it and reads the
// real value the proxy injected.
func TestDoubleContentEncodingRefused(t *testing.T) {
	const value = "custom-REALVALUE-0123456789"
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		echo := []byte("you sent X-Token: " + r.Header.Get("X-Token"))
		w.Header()["Content-Encoding"] = []string{"gzip", "gzip"}
		w.Write(gz(gz(echo)))
	})
	e := newReviewEnv(t, handler, false)
	placeholder := e.custom(t, value)
	tc, br := e.terminated(t, "api.test")
	fmt.Fprintf(tc, "GET /echo HTTP/1.1\r\nHost: api.test\r\nX-Token: %s\r\nAccept-Encoding: identity\r\n\r\n", placeholder)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	got := body
	for range 3 { // what the guest does with gzip magic bytes
		zr, err := gzip.NewReader(bytes.NewReader(got))
		if err != nil {
			break
		}
		got, _ = io.ReadAll(zr)
	}
	if bytes.Contains(got, []byte(value)) {
		t.Errorf("status %d, Content-Encoding %q: the guest decompressed the body and read the real value: %q",
			resp.StatusCode, resp.Header.Values("Content-Encoding"), got)
	}
}
