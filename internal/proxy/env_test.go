package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sbx-dev/sbx/internal/resolve"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testCAs are created once: minting CAs is cheap, but sharing them keeps the
// leaf caches warm across tests and benchmarks.
var (
	caOnce       sync.Once
	proxyCA      *CA // the proxy's per-install CA
	upstreamCA   *CA // signs the loopback "internet" servers
	caErr        error
	caDir        string
	upstreamPool *x509.CertPool
	proxyPool    *x509.CertPool
)

func testCAs(tb testing.TB) {
	tb.Helper()
	caOnce.Do(func() {
		caDir, caErr = os.MkdirTemp("", "sbx-proxy-test-")
		if caErr != nil {
			return
		}
		if proxyCA, caErr = LoadOrCreateCA(filepath.Join(caDir, "proxy")); caErr != nil {
			return
		}
		if upstreamCA, caErr = LoadOrCreateCA(filepath.Join(caDir, "upstream")); caErr != nil {
			return
		}
		upstreamPool = x509.NewCertPool()
		upstreamPool.AddCert(upstreamCA.Certificate())
		proxyPool = x509.NewCertPool()
		proxyPool.AddCert(proxyCA.Certificate())
	})
	if caErr != nil {
		tb.Fatal(caErr)
	}
}

// upstream is a loopback "internet" server answering as api.test.
type upstream struct {
	plain *httptest.Server
	tls   *httptest.Server
	seen  chan *http.Request // nil or receives a clone of every request
}

// echoHandler answers with what it saw, so tests can check what crossed the
// proxy: method, path, protocol, and the X-Injected header.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/ws":
		serveEchoUpgrade(w, r)
		return
	case "/sse":
		serveSSE(w, r)
		return
	case "/big":
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		buf := make([]byte, 256<<10)
		for n > 0 {
			k, err := w.Write(buf[:min(n, len(buf))])
			if err != nil {
				return
			}
			n -= k
		}
		return
	}
	w.Header().Set("X-Upstream-Proto", r.Proto)
	w.Header().Set("X-Upstream-Host", r.Host)
	w.Header().Set("X-Upstream-Injected", r.Header.Get("X-Injected"))
	w.Header().Set("X-Upstream-Proxy-Connection", r.Header.Get("Proxy-Connection"))
	fmt.Fprintf(w, "hello %s %s", r.Method, r.URL.Path)
}

// sseRelease is closed by a test to let the SSE handler send its second event.
var sseRelease = struct {
	sync.Mutex
	ch chan struct{}
}{}

func serveSSE(w http.ResponseWriter, r *http.Request) {
	sseRelease.Lock()
	ch := sseRelease.ch
	sseRelease.Unlock()
	w.Header().Set("Content-Type", "text/event-stream")
	fmt.Fprint(w, "data: first\n\n")
	http.NewResponseController(w).Flush()
	select {
	case <-ch:
	case <-r.Context().Done():
		return
	case <-time.After(10 * time.Second):
	}
	fmt.Fprint(w, "data: second\n\n")
}

// serveEchoUpgrade answers a WebSocket-style upgrade with 101 and then
// echoes raw bytes.
func serveEchoUpgrade(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "websocket" {
		http.Error(w, "want upgrade", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprint(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	brw.Flush()
	_, _ = io.Copy(conn, brw)
}

func newUpstream(tb testing.TB) *upstream {
	tb.Helper()
	testCAs(tb)
	u := &upstream{}
	u.plain = httptest.NewUnstartedServer(http.HandlerFunc(echoHandler))
	u.plain.Config.ErrorLog = log.New(io.Discard, "", 0)
	u.plain.Start()
	leaf, err := upstreamCA.Leaf("api.test")
	if err != nil {
		tb.Fatal(err)
	}
	u.tls = httptest.NewUnstartedServer(http.HandlerFunc(echoHandler))
	u.tls.EnableHTTP2 = true
	u.tls.Config.ErrorLog = log.New(io.Discard, "", 0)
	u.tls.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	u.tls.StartTLS()
	tb.Cleanup(u.plain.Close)
	tb.Cleanup(u.tls.Close)
	return u
}

func port(tb testing.TB, s *httptest.Server) uint16 {
	tb.Helper()
	ap, err := netip.ParseAddrPort(s.Listener.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	return ap.Port()
}

// env is a proxy wired to loopback upstreams, a hosts file, a recording
// dialer and an audit sink.
type env struct {
	tb    testing.TB
	up    *upstream
	p     *Proxy
	addr  string // forward proxy listener
	hosts *resolve.HostsFile

	mu     sync.Mutex
	events []Event           // guarded by mu
	dials  []string          // guarded by mu
	mods   int               // guarded by mu; ModifyRequest calls
	remap  map[uint16]string // read-only after newEnv: dial port → real addr
}

type envOptions struct {
	decide    func(ctx context.Context, t Target) Decision
	intercept func(host string, port uint16) bool
	resolver  resolve.Resolver // nil → hosts file
	noCA      bool
	log       *slog.Logger          // nil → testLogger
	modify    func(r *http.Request) // runs after the env's own ModifyRequest
	// hooks, when set, replace the env's ModifyRequest and set
	// ModifyResponse (the secrets injector's, for benchmarks).
	hooks *hooks
}

type hooks struct {
	req  func(*http.Request) error
	resp func(*http.Response) error
}

// allowHosts is a Decide that allows the listed hosts on any port except 25.
func allowHosts(hosts ...string) func(context.Context, Target) Decision {
	return func(_ context.Context, t Target) Decision {
		if t.Port == 25 {
			return Decision{Rule: "deny *:25", Reason: "port 25 is denied", Hint: "sbx policy allow network " + net.JoinHostPort(t.Host, "25")}
		}
		if slices.Contains(hosts, t.Host) {
			return Decision{Allow: true, Rule: "allow " + t.Host}
		}
		return Decision{Rule: "default (deny-all)", Reason: "no rule allows " + t.Host, Hint: "sbx policy allow network " + t.Host}
	}
}

func newEnv(tb testing.TB, o envOptions) *env {
	tb.Helper()
	testCAs(tb)
	e := &env{tb: tb, up: newUpstream(tb), remap: map[uint16]string{}}
	e.remap[80] = e.up.plain.Listener.Addr().String()
	e.remap[443] = e.up.tls.Listener.Addr().String()

	hostsPath := filepath.Join(tb.TempDir(), "hosts")
	if err := os.WriteFile(hostsPath, []byte("127.0.0.1 api.test other.test denied.test\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	hf, err := resolve.NewHostsFile(hostsPath, nil)
	if err != nil {
		tb.Fatal(err)
	}
	e.hosts = hf
	var res resolve.Resolver = hf
	if o.resolver != nil {
		res = o.resolver
	}
	if o.decide == nil {
		o.decide = allowHosts("api.test", "other.test")
	}
	cfg := Config{
		Decide:   o.decide,
		Resolver: res,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			e.mu.Lock()
			e.dials = append(e.dials, addr)
			e.mu.Unlock()
			if ap, err := netip.ParseAddrPort(addr); err == nil {
				if real, ok := e.remap[ap.Port()]; ok {
					addr = real
				}
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		Intercept: o.intercept,
		ModifyRequest: func(r *http.Request) error {
			e.mu.Lock()
			e.mods++
			e.mu.Unlock()
			r.Header.Set("X-Injected", "yes")
			if o.modify != nil {
				o.modify(r)
			}
			return nil
		},
		Audit: func(ev Event) {
			e.mu.Lock()
			e.events = append(e.events, ev)
			e.mu.Unlock()
		},
		UpstreamRoots: upstreamPool,
		Log:           testLogger(tb),
	}
	if o.log != nil {
		cfg.Log = o.log
	}
	if o.hooks != nil {
		cfg.ModifyRequest, cfg.ModifyResponse = o.hooks.req, o.hooks.resp
	}
	if !o.noCA {
		cfg.CA = proxyCA
	}
	e.p, err = New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	e.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.p.Serve(ctx, l) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Serve: %v", err)
		}
		e.p.Close()
	})
	return e
}

func (e *env) Events() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.events)
}

func (e *env) Dials() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.dials)
}

func (e *env) Mods() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mods
}

// client returns an HTTP client using the forward proxy and trusting roots.
func (e *env) client(roots *x509.CertPool, h2 bool) *http.Client {
	pu := &url.URL{Scheme: "http", Host: e.addr}
	tr := &http.Transport{
		Proxy:             http.ProxyURL(pu),
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	e.tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// connect opens a CONNECT tunnel through the forward proxy and returns the
// connection and the proxy's response.
func (e *env) connect(authority string) (net.Conn, *http.Response) {
	e.tb.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.tb.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		e.tb.Fatal(err)
	}
	if br.Buffered() > 0 && resp.StatusCode == http.StatusOK {
		e.tb.Fatal("proxy sent bytes after the CONNECT response")
	}
	return c, resp
}

// transparent starts HandleConn behind a loopback listener and returns a
// dialer for it: each dial becomes one HandleConn with dst.
func (e *env) transparent(dst netip.AddrPort) func() net.Conn {
	e.tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { e.p.HandleConn(ctx, c, dst) })
		}
	})
	e.tb.Cleanup(func() {
		l.Close()
		cancel()
		wg.Wait()
	})
	return func() net.Conn {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			e.tb.Fatal(err)
		}
		return c
	}
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(b []byte) (int, error) {
	w.tb.Log(string(b))
	return len(b), nil
}
