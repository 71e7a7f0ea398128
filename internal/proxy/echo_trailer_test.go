package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/resolve"
	"github.com/sbx-dev/sbx/internal/secrets"
)

// reviewEnv is the real proxy with a secrets.Injector in front of one
// loopback HTTPS server (handler) answering for api.test.
type reviewEnv struct {
	t     *testing.T
	store *secrets.Store
	addr  string
	dials atomic.Int64 // upstream connections the proxy opened
	logs  lockedBuffer // the proxy's log
}

// lockedBuffer is a buffer safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newReviewEnv(t *testing.T, handler http.Handler, upstreamH2 bool) *reviewEnv {
	t.Helper()
	testCAs(t)
	e := &reviewEnv{t: t, store: secrets.NewStore(secrets.Options{Dir: t.TempDir()})}
	srv := httptest.NewUnstartedServer(handler)
	srv.EnableHTTP2 = upstreamH2
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return upstreamCA.Leaf(h.ServerName) }}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	hostsPath := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hostsPath, []byte("127.0.0.1 api.test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hf, err := resolve.NewHostsFile(hostsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	inj := secrets.NewInjector(e.store, "sb-test", nil, nil)
	p, err := New(Config{
		Decide:   allowHosts("api.test"),
		Resolver: hf,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			e.dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, srv.Listener.Addr().String())
		},
		CA: proxyCA, Intercept: inj.Intercept, ModifyRequest: inj.ModifyRequest, ModifyResponse: inj.ModifyResponse,
		ScrubText: inj.ScrubText, UpstreamRoots: upstreamPool,
		Log: slog.New(slog.NewTextHandler(&e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	return e
}

func (e *reviewEnv) client(h2 bool) *http.Client {
	tr := &http.Transport{
		Proxy:             http.ProxyURL(&url.URL{Scheme: "http", Host: e.addr}),
		TLSClientConfig:   &tls.Config{RootCAs: proxyPool},
		ForceAttemptHTTP2: h2,
		MaxConnsPerHost:   1, // the guest uses one connection to the proxy
	}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func (e *reviewEnv) custom(t *testing.T, value string) string {
	ent, err := e.store.SetCustom(secrets.Custom{Env: "MY_TOKEN", Hosts: []string{"api.test"}}, secrets.New(value))
	if err != nil {
		t.Fatal(err)
	}
	return ent.Placeholder
}

const reviewValue = "custom-REALVALUE-0123456789"

// Found by the second outside review: "Trailers from such hosts are dropped" — ModifyResponse
// sets resp.Trailer = nil before the body is read, but the transport fills
// resp.Trailer when it reaches the end of a chunked body, and
// httputil.ReverseProxy then sends those trailers to the guest unscrubbed.
func TestTrailersNeverCarryValue(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("announce") == "1" {
			w.Header().Set("Trailer", "X-Echo")
		}
		io.WriteString(w, "ok")
		w.(http.Flusher).Flush()
		w.Header().Set(http.TrailerPrefix+"X-Echo", r.Header.Get("X-Token"))
	}), true)
	ph := e.custom(t, reviewValue)
	for _, h2 := range []bool{false, true} {
		for _, announce := range []string{"0", "1"} {
			req, _ := http.NewRequest(http.MethodGet, "https://api.test/t?announce="+announce, nil)
			req.Header.Set("X-Token", ph)
			resp, err := e.client(h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got := resp.Trailer.Get("X-Echo"); strings.Contains(got, reviewValue) {
				t.Errorf("h2=%v announce=%s: trailer X-Echo carried the real value to the guest: %q", h2, announce, got)
			}
		}
	}
}

// Found by the second outside review: a 1xx informational response (103 Early Hints) is copied
// to the guest by httputil.ReverseProxy from its Got1xxResponse trace hook;
// ModifyResponse never sees it, so its headers are not scrubbed.
func TestEarlyHintsNeverCarryValue(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css?v="+r.Header.Get("X-Token")+">; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "ok")
	}), false)
	ph := e.custom(t, reviewValue)
	var mu sync.Mutex
	var hints []string
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			mu.Lock()
			hints = append(hints, fmt.Sprint(code, h))
			mu.Unlock()
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.test/hints", nil)
	req.Header.Set("X-Token", ph)
	resp, err := e.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if strings.Contains(strings.Join(hints, "\n"), reviewValue) {
		t.Errorf("a 1xx response carried the real value to the guest: %q", hints)
	}
}
