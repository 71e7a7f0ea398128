package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", u, err)
	}
	return resp, string(b)
}

func TestForwardHTTPAllowed(t *testing.T) {
	e := newEnv(t, envOptions{})
	u := fmt.Sprintf("http://api.test:%d/hello?secret=s3cr3t", port(t, e.up.plain))
	resp, body := get(t, e.client(nil, false), u)
	if resp.StatusCode != http.StatusOK || body != "hello GET /hello" {
		t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, "hello GET /hello")
	}
	if got := resp.Header.Get("X-Upstream-Injected"); got != "yes" {
		t.Errorf("ModifyRequest header at upstream = %q, want yes", got)
	}
	if got := resp.Header.Get("X-Upstream-Proxy-Connection"); got != "" {
		t.Errorf("Proxy-Connection reached upstream: %q", got)
	}
	if got, want := resp.Header.Get("X-Upstream-Host"), fmt.Sprintf("api.test:%d", port(t, e.up.plain)); got != want {
		t.Errorf("upstream Host = %q, want %q", got, want)
	}
	want := []Event{{Host: "api.test", IP: netip.MustParseAddr("127.0.0.1"), Port: port(t, e.up.plain), Via: ViaForward, Scheme: SchemeHTTP, Allowed: true, Rule: "allow api.test", Method: "GET", Path: "/hello"}}
	if diff := cmp.Diff(want, e.Events(), cmpopts.IgnoreFields(Event{}, "Time"), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("audit (-want +got):\n%s", diff)
	}
	for _, ev := range e.Events() {
		if strings.Contains(fmt.Sprint(ev), "s3cr3t") {
			t.Errorf("audit event carries the query: %+v", ev)
		}
	}
}

func TestForwardHTTPDenied(t *testing.T) {
	e := newEnv(t, envOptions{})
	u := fmt.Sprintf("http://denied.test:%d/x", port(t, e.up.plain))
	resp, body := get(t, e.client(nil, false), u)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status = %d, want 403", resp.StatusCode)
	}
	for _, want := range []string{"denied.test", "default (deny-all)", "no rule allows denied.test", "sbx policy allow network denied.test"} {
		if !strings.Contains(body, want) {
			t.Errorf("403 body %q does not contain %q", body, want)
		}
	}
	if d := e.Dials(); len(d) != 0 {
		t.Errorf("denied request dialed %v", d)
	}
	if ev := e.Events(); len(ev) != 1 || ev[0].Allowed || ev[0].Host != "denied.test" {
		t.Errorf("audit = %+v, want one denied event for denied.test", ev)
	}
}

func TestNilDecideDeniesAll(t *testing.T) {
	e := newEnv(t, envOptions{decide: func(context.Context, Target) Decision { return Decision{} }})
	resp, _ := get(t, e.client(nil, false), fmt.Sprintf("http://api.test:%d/", port(t, e.up.plain)))
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("zero Decision: status %d, want 403", resp.StatusCode)
	}
	p, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if d := p.decideTarget(t.Context(), Target{Host: "x"}, nil); d.Allow {
		t.Fatal("nil Decide allowed")
	}
}

func TestConnectTunnel(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.client(upstreamPool, false)
	u := fmt.Sprintf("https://api.test:%d/tunnel", port(t, e.up.tls))
	resp, body := get(t, c, u)
	if resp.StatusCode != http.StatusOK || body != "hello GET /tunnel" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if iss := resp.TLS.PeerCertificates[0].Issuer.CommonName; iss != upstreamCA.Certificate().Subject.CommonName || resp.TLS.PeerCertificates[0].Equal(proxyCA.Certificate()) {
		t.Errorf("tunnelled cert issuer = %q", iss)
	}
	if e.Mods() != 0 || resp.Header.Get("X-Upstream-Injected") != "" {
		t.Error("proxy saw cleartext of a tunnelled connection")
	}
	ev := e.Events()
	if len(ev) != 1 || ev[0].Method != http.MethodConnect || !ev[0].Allowed || ev[0].Scheme != SchemeTCP {
		t.Errorf("audit = %+v, want one allowed CONNECT", ev)
	}
}

func TestConnectDeniedPort(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, resp := e.connect("api.test:25")
	defer c.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT to port 25: %d, want 403", resp.StatusCode)
	}
	for _, want := range []string{"api.test:25", "deny *:25", "sbx policy allow network api.test:25"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("403 body %q does not contain %q", body, want)
		}
	}
	if d := e.Dials(); len(d) != 0 {
		t.Errorf("denied CONNECT dialed %v", d)
	}
}

func TestConnectDeniedHost(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, resp := e.connect(fmt.Sprintf("denied.test:%d", port(t, e.up.tls)))
	defer c.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT denied.test: %d, want 403", resp.StatusCode)
	}
}

func interceptAPI(host string, _ uint16) bool { return host == "api.test" }

func TestInterceptHTTP1AndHTTP2(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			e := newEnv(t, envOptions{intercept: interceptAPI})
			c := e.client(proxyPool, h2)
			for i := range 3 { // kept alive: later requests reuse the connection
				u := fmt.Sprintf("https://api.test:%d/term/%d?k=v", port(t, e.up.tls), i)
				resp, body := get(t, c, u)
				if resp.StatusCode != http.StatusOK || body != fmt.Sprintf("hello GET /term/%d", i) {
					t.Fatalf("got %d %q", resp.StatusCode, body)
				}
				if iss := resp.TLS.PeerCertificates[0].Issuer.CommonName; iss != caName {
					t.Errorf("terminated cert issuer = %q, want %q", iss, caName)
				}
				if got := resp.Header.Get("X-Upstream-Injected"); got != "yes" {
					t.Errorf("ModifyRequest header at upstream = %q, want yes", got)
				}
				wantProto := "HTTP/1.1"
				if h2 {
					wantProto = "HTTP/2.0"
				}
				if resp.Proto != wantProto {
					t.Errorf("client proto = %s, want %s", resp.Proto, wantProto)
				}
				// The upstream protocol mirrors the client's.
				if got := resp.Header.Get("X-Upstream-Proto"); got != wantProto {
					t.Errorf("upstream proto = %s, want %s", got, wantProto)
				}
			}
			var paths []string
			for _, ev := range e.Events() {
				if !ev.Allowed {
					t.Errorf("denied event %+v", ev)
				}
				paths = append(paths, ev.Method+" "+ev.Path)
			}
			want := []string{"CONNECT ", "GET /term/0", "GET /term/1", "GET /term/2"}
			if diff := cmp.Diff(want, paths); diff != "" {
				t.Errorf("audited requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInterceptUpstreamUntrusted(t *testing.T) {
	e := newEnv(t, envOptions{intercept: interceptAPI})
	e.p.h1.TLSClientConfig.RootCAs = proxyPool // not the upstream's CA
	e.p.h2.TLSClientConfig.RootCAs = proxyPool
	resp, body := get(t, e.client(proxyPool, false), fmt.Sprintf("https://api.test:%d/", port(t, e.up.tls)))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "certificate") {
		t.Fatalf("untrusted upstream: %d %q, want 502 naming the certificate", resp.StatusCode, body)
	}
}

// tlsOverConnect returns a TLS client connection through a CONNECT tunnel.
func tlsOverConnect(t *testing.T, e *env, authority, serverName string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, resp := e.connect(authority)
	if resp.StatusCode != http.StatusOK {
		c.Close()
		t.Fatalf("CONNECT %s: %s", authority, resp.Status)
	}
	cfg = cfg.Clone()
	cfg.ServerName = serverName
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(t.Context()); err != nil {
		c.Close()
		t.Fatalf("tls handshake: %v", err)
	}
	return tc
}

func TestHostSNIMismatchConnect(t *testing.T) {
	e := newEnv(t, envOptions{intercept: interceptAPI})
	tc := tlsOverConnect(t, e, fmt.Sprintf("api.test:%d", port(t, e.up.tls)), "api.test", &tls.Config{RootCAs: proxyPool, NextProtos: []string{"http/1.1"}})
	defer tc.Close()
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: other.test:%d\r\n\r\n", port(t, e.up.tls))
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(string(body), "must match the TLS server name") {
		t.Fatalf("Host/SNI mismatch: %d %q, want 421 with explanation", resp.StatusCode, body)
	}
	if e.Mods() != 0 {
		t.Error("mismatched request reached ModifyRequest")
	}
}

// wsEcho performs an upgrade on rw and checks raw bytes echo after 101.
func wsEcho(t *testing.T, rw io.ReadWriter, host string) {
	t.Helper()
	fmt.Fprintf(rw, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", host)
	br := bufio.NewReader(rw)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	for i := range 3 {
		msg := fmt.Sprintf("ping %d", i)
		if _, err := io.WriteString(rw, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != msg {
			t.Fatalf("echo = %q, want %q", got, msg)
		}
	}
}

func TestWebSocket(t *testing.T) {
	t.Run("tunnel", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		host := fmt.Sprintf("api.test:%d", port(t, e.up.tls))
		tc := tlsOverConnect(t, e, host, "api.test", &tls.Config{RootCAs: upstreamPool, NextProtos: []string{"http/1.1"}})
		defer tc.Close()
		wsEcho(t, tc, host)
	})
	t.Run("terminate", func(t *testing.T) {
		e := newEnv(t, envOptions{intercept: interceptAPI})
		host := fmt.Sprintf("api.test:%d", port(t, e.up.tls))
		tc := tlsOverConnect(t, e, host, "api.test", &tls.Config{RootCAs: proxyPool, NextProtos: []string{"http/1.1"}})
		defer tc.Close()
		wsEcho(t, tc, host)
		if e.Mods() != 1 {
			t.Errorf("ModifyRequest calls = %d, want 1", e.Mods())
		}
	})
	t.Run("plain", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		host := fmt.Sprintf("api.test:%d", port(t, e.up.plain))
		// Absolute-form upgrade through the forward proxy.
		fmt.Fprintf(c, "GET http://%s/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", host, host)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		io.WriteString(c, "raw")
		got := make([]byte, 3)
		if _, err := io.ReadFull(br, got); err != nil || string(got) != "raw" {
			t.Fatalf("echo %q %v", got, err)
		}
	})
}

func TestSSEStreams(t *testing.T) {
	for _, mode := range []string{"plain", "terminate-h1", "terminate-h2"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, envOptions{intercept: interceptAPI})
			release := make(chan struct{})
			sseRelease.Lock()
			sseRelease.ch = release
			sseRelease.Unlock()
			var c *http.Client
			u := fmt.Sprintf("https://api.test:%d/sse", port(t, e.up.tls))
			switch mode {
			case "plain":
				c = e.client(nil, false)
				u = fmt.Sprintf("http://api.test:%d/sse", port(t, e.up.plain))
			case "terminate-h1":
				c = e.client(proxyPool, false)
			default:
				c = e.client(proxyPool, true)
			}
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
			resp, err := c.Do(req)
			if err != nil {
				close(release)
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			got := make(chan string, 1)
			go func() {
				line, _ := br.ReadString('\n')
				got <- line
			}()
			select {
			case line := <-got:
				if line != "data: first\n" {
					t.Errorf("first line %q", line)
				}
			case <-time.After(5 * time.Second):
				t.Error("first event did not arrive before the server finished: buffered")
			}
			close(release)
			rest, _ := io.ReadAll(br)
			if !strings.Contains(string(rest), "data: second") {
				t.Errorf("rest = %q", rest)
			}
		})
	}
}

func TestTransparentHTTP(t *testing.T) {
	e := newEnv(t, envOptions{})
	// The guest dialed a synthetic address on port 80; the proxy decides on
	// Host and dials the name's own address (remapped to the test server).
	dial := e.transparent(netip.MustParseAddrPort("198.18.0.7:80"))
	c := dial()
	defer c.Close()
	br := bufio.NewReader(c)
	for _, host := range []string{"api.test", "denied.test"} {
		fmt.Fprintf(c, "GET /t?q=1 HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch host {
		case "api.test":
			if resp.StatusCode != 200 || string(body) != "hello GET /t" {
				t.Errorf("%s: %d %q", host, resp.StatusCode, body)
			}
		default:
			if resp.StatusCode != 403 || !strings.Contains(string(body), "sbx policy allow network denied.test") {
				t.Errorf("%s: %d %q", host, resp.StatusCode, body)
			}
		}
	}
	if diff := cmp.Diff([]string{"127.0.0.1:80"}, e.Dials()); diff != "" {
		t.Errorf("dials (-want +got):\n%s", diff)
	}
	for _, ev := range e.Events() {
		if ev.Via != ViaTransparent || ev.Scheme != SchemeHTTP {
			t.Errorf("event %+v", ev)
		}
	}
}

func TestTransparentSniffHTTPOtherPort(t *testing.T) {
	e := newEnv(t, envOptions{})
	pp := port(t, e.up.plain)
	dial := e.transparent(netip.AddrPortFrom(netip.MustParseAddr("198.18.0.7"), pp))
	c := dial()
	defer c.Close()
	fmt.Fprintf(c, "GET /sniff HTTP/1.1\r\nHost: api.test:%d\r\nConnection: close\r\n\r\n", pp)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "hello GET /sniff" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

func transparentTLS(t *testing.T, e *env, dst netip.AddrPort, sni string, roots bool) (*http.Response, string) {
	t.Helper()
	dial := e.transparent(dst)
	pool := upstreamPool
	if roots {
		pool = proxyPool
	}
	tr := &http.Transport{
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return dial(), nil },
		TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: sni},
		ForceAttemptHTTP2: true,
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return get(t, c, fmt.Sprintf("https://%s/sni", sni))
}

func TestTransparentTLS(t *testing.T) {
	dst := netip.MustParseAddrPort("198.18.0.9:443")
	t.Run("tunnel", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		resp, body := transparentTLS(t, e, dst, "api.test", false)
		if resp.StatusCode != 200 || body != "hello GET /sni" || e.Mods() != 0 {
			t.Fatalf("%d %q mods=%d", resp.StatusCode, body, e.Mods())
		}
		if diff := cmp.Diff([]string{"127.0.0.1:443"}, e.Dials()); diff != "" {
			t.Errorf("dials (-want +got):\n%s", diff)
		}
		ev := e.Events()
		if len(ev) != 1 || ev[0].Host != "api.test" || ev[0].Via != ViaTransparent || ev[0].Scheme != SchemeHTTPS {
			t.Errorf("events %+v", ev)
		}
	})
	t.Run("terminate", func(t *testing.T) {
		e := newEnv(t, envOptions{intercept: interceptAPI})
		resp, body := transparentTLS(t, e, dst, "api.test", true)
		if resp.StatusCode != 200 || body != "hello GET /sni" || resp.Header.Get("X-Upstream-Injected") != "yes" || resp.ProtoMajor != 2 {
			t.Fatalf("%d %q %s injected=%q", resp.StatusCode, body, resp.Proto, resp.Header.Get("X-Upstream-Injected"))
		}
	})
	t.Run("blocked", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		resp, body := transparentTLS(t, e, dst, "denied.test", true)
		if resp.StatusCode != 403 || !strings.Contains(body, "denied.test") || !strings.Contains(body, "sbx policy allow network denied.test") {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		if len(e.Dials()) != 0 {
			t.Errorf("blocked connection dialed %v", e.Dials())
		}
	})
	t.Run("blocked-no-ca-resets", func(t *testing.T) {
		e := newEnv(t, envOptions{noCA: true})
		dial := e.transparent(dst)
		c := tls.Client(dial(), &tls.Config{RootCAs: proxyPool, ServerName: "denied.test"})
		defer c.Close()
		if err := c.HandshakeContext(t.Context()); err == nil {
			t.Fatal("handshake succeeded for a blocked host without a CA")
		}
	})
	t.Run("mismatch", func(t *testing.T) {
		e := newEnv(t, envOptions{intercept: interceptAPI})
		dial := e.transparent(dst)
		c := tls.Client(dial(), &tls.Config{RootCAs: proxyPool, ServerName: "api.test", NextProtos: []string{"http/1.1"}})
		defer c.Close()
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Fatalf("status %d, want 421", resp.StatusCode)
		}
	})
	t.Run("sniffed-other-port", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		tp := port(t, e.up.tls)
		resp, body := transparentTLS(t, e, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), tp), "api.test", false)
		if resp.StatusCode != 200 || body != "hello GET /sni" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
}

func TestTransparentTCP(t *testing.T) {
	// A server-speaks-first service on an allowed IP:port.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "SSH-2.0-test\r\n")
		io.Copy(c, c)
	})
	ap := netip.MustParseAddrPort(l.Addr().String())
	e := newEnv(t, envOptions{decide: func(_ context.Context, tg Target) Decision {
		return Decision{Allow: tg.Host == "127.0.0.1" && tg.Scheme == SchemeTCP, Rule: "allow 127.0.0.1:port"}
	}})
	c := e.transparent(ap)()
	defer c.Close()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "SSH-2.0-test\r\n" {
		t.Fatalf("banner %q %v", line, err)
	}
	io.WriteString(c, "x")
	b, _ := br.ReadByte()
	if b != 'x' {
		t.Fatalf("echo %q", b)
	}
}

// rebindResolver answers good on the first lookup of a name and evil after:
// a proxy that resolved twice would connect to evil.
type rebindResolver struct {
	n          atomic.Int32
	good, evil netip.Addr
}

func (r *rebindResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	if r.n.Add(1) == 1 {
		return []netip.Addr{r.good}, nil
	}
	return []netip.Addr{r.evil}, nil
}

func TestDNSRebinding(t *testing.T) {
	good, evil := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	decide := func(_ context.Context, tg Target) Decision {
		for _, ip := range tg.IPs {
			if ip != good {
				return Decision{Rule: "private address", Reason: "resolves to " + ip.String()}
			}
		}
		return Decision{Allow: true, Rule: "allow"}
	}
	for _, mode := range []string{"http", "connect", "terminate"} {
		t.Run(mode, func(t *testing.T) {
			var o envOptions
			o.resolver = &rebindResolver{good: good, evil: evil}
			o.decide = decide
			if mode == "terminate" {
				o.intercept = interceptAPI
			}
			e := newEnv(t, o)
			var resp *http.Response
			switch mode {
			case "http":
				resp, _ = get(t, e.client(nil, false), fmt.Sprintf("http://api.test:%d/", port(t, e.up.plain)))
			case "connect":
				resp, _ = get(t, e.client(upstreamPool, false), fmt.Sprintf("https://api.test:%d/", port(t, e.up.tls)))
			default:
				resp, _ = get(t, e.client(proxyPool, false), fmt.Sprintf("https://api.test:%d/", port(t, e.up.tls)))
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			for _, d := range e.Dials() {
				if ap := netip.MustParseAddrPort(d); ap.Addr() != good {
					t.Errorf("dialed %s, not the vetted address %s", d, good)
				}
			}
			if len(e.Dials()) != 1 {
				t.Errorf("dials = %v, want exactly one", e.Dials())
			}
		})
	}
}

func TestHostsFileResolvesTestNames(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, h := range []string{"api.test", "other.test"} {
		if !e.hosts.Mapped(h) {
			t.Errorf("%s not mapped", h)
		}
		ips, err := e.hosts.LookupNetIP(t.Context(), "ip", h)
		if err != nil || len(ips) != 1 || ips[0] != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("%s → %v %v", h, ips, err)
		}
	}
}

func TestSplitHostPort(t *testing.T) {
	tests := []struct {
		in       string
		def      uint16
		host     string
		port     uint16
		wantFail bool
	}{
		{"Example.COM.", 80, "example.com", 80, false},
		{"example.com:8080", 80, "example.com", 8080, false},
		{"[::1]:443", 0, "::1", 443, false},
		{"[::1]", 443, "::1", 443, false},
		{"example.com", 0, "", 0, true},
		{"example.com:0", 80, "", 0, true},
		{"example.com:99999", 80, "", 0, true},
		{"a@b:80", 0, "", 0, true},
	}
	for _, tt := range tests {
		h, p, err := splitHostPort(tt.in, tt.def)
		if (err != nil) != tt.wantFail || h != tt.host || p != tt.port {
			t.Errorf("splitHostPort(%q, %d) = %q, %d, %v", tt.in, tt.def, h, p, err)
		}
	}
}

func TestBlockedPage(t *testing.T) {
	got := BlockedPage(Target{Host: "example.com", Port: 443, Scheme: SchemeHTTPS},
		Decision{Rule: "default (balanced)", Reason: "no rule allows example.com", Hint: "sbx policy allow network example.com"})
	want := "sbx: blocked https to example.com:443 by the sandbox network policy\n" +
		"rule: default (balanced)\nreason: no rule allows example.com\n" +
		"to allow it, run on the host: sbx policy allow network example.com\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("BlockedPage (-want +got):\n%s", diff)
	}
	_ = strconv.Itoa
}
