package proxy

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/resolve"
	"github.com/sbx-dev/sbx/internal/secrets"
)

// seenRequest is what the fake API server received.
type seenRequest struct {
	Host   string
	Path   string
	Query  string
	Header http.Header
	Body   string
}

// injectEnv is the real proxy with a secrets.Injector as its hooks, a fake
// API server on loopback answering for every name (TLS from upstreamCA),
// debug logs and audit records captured for grepping.
type injectEnv struct {
	t     *testing.T
	store *secrets.Store
	addr  string // forward proxy
	p     *Proxy
	logs  syncBuffer
	tls   *httptest.Server
	plain *httptest.Server

	mu     sync.Mutex
	seen   []seenRequest       // guarded by mu
	events []Event             // guarded by mu
	notes  []secrets.AuditNote // guarded by mu
}

var injectHosts = []string{"api.openai.com", "api.anthropic.com", "github.com", "api.test", "other.test", "tunnel.test"}

func newInjectEnv(t *testing.T) *injectEnv {
	t.Helper()
	testCAs(t)
	e := &injectEnv{t: t, store: secrets.NewStore(secrets.Options{Dir: t.TempDir()})}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.seen = append(e.seen, seenRequest{Host: r.Host, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: string(b)})
		e.mu.Unlock()
		if r.URL.Path == "/echo" {
			// What many debug and error endpoints do: hand back what came.
			echo(w, r, b)
			return
		}
		fmt.Fprint(w, "ok")
	})
	e.tls = httptest.NewUnstartedServer(handler)
	e.tls.EnableHTTP2 = true
	e.tls.Config.ErrorLog = log.New(io.Discard, "", 0)
	e.tls.TLS = &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return upstreamCA.Leaf(hello.ServerName)
	}}
	e.tls.StartTLS()
	t.Cleanup(e.tls.Close)
	e.plain = httptest.NewServer(handler)
	t.Cleanup(e.plain.Close)

	hostsPath := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hostsPath, []byte("127.0.0.1 "+strings.Join(injectHosts, " ")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hf, err := resolve.NewHostsFile(hostsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewJSONHandler(&e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	inj := secrets.NewInjector(e.store, "sb-test", logger, func(n secrets.AuditNote) {
		e.mu.Lock()
		e.notes = append(e.notes, n)
		e.mu.Unlock()
	})
	remap := map[uint16]string{443: e.tls.Listener.Addr().String(), 80: e.plain.Listener.Addr().String()}
	e.p, err = New(Config{
		Decide:   allowHosts(injectHosts...),
		Resolver: hf,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if ap, err := netip.ParseAddrPort(addr); err == nil {
				if real, ok := remap[ap.Port()]; ok {
					addr = real
				}
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		CA:             proxyCA,
		Intercept:      inj.Intercept,
		ModifyRequest:  inj.ModifyRequest,
		ModifyResponse: inj.ModifyResponse,
		Audit: func(ev Event) {
			e.mu.Lock()
			e.events = append(e.events, ev)
			e.mu.Unlock()
		},
		UpstreamRoots: upstreamPool,
		Log:           logger,
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
	go func() { done <- e.p.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		e.p.Close()
	})
	return e
}

// client goes through the forward proxy and trusts the proxy CA only.
func (e *injectEnv) client(h2 bool) *http.Client {
	tr := &http.Transport{
		Proxy:             http.ProxyURL(&url.URL{Scheme: "http", Host: e.addr}),
		TLSClientConfig:   &tls.Config{RootCAs: proxyPool},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// do sends a request and returns what the server saw (the zero value and
// the status when it saw nothing new).
func (e *injectEnv) do(c *http.Client, method, u string, hdr http.Header, body string) (seenRequest, int) {
	e.t.Helper()
	e.mu.Lock()
	before := len(e.seen)
	e.mu.Unlock()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(e.t.Context(), method, u, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, u, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.seen) == before {
		return seenRequest{}, resp.StatusCode
	}
	return e.seen[len(e.seen)-1], resp.StatusCode
}

// echo answers with the request's headers and body, in a header and the
// body, gzip-compressed when the client accepts it and asked with gz=1.
func echo(w http.ResponseWriter, r *http.Request, body []byte) {
	var dump strings.Builder
	r.Header.Write(&dump)
	dump.Write(body)
	w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
	w.Header().Set("X-Echo-Token", r.Header.Get("X-Token"))
	if r.URL.Query().Get("gz") == "1" && strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, dump.String())
		zw.Close()
		return
	}
	if r.URL.Query().Get("br") == "1" {
		w.Header().Set("Content-Encoding", "br")
	}
	io.WriteString(w, dump.String())
}

// fetch sends a request and returns the response's status, headers and
// body as the client got them.
func (e *injectEnv) fetch(c *http.Client, method, u string, hdr http.Header, body string) (int, http.Header, string) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(e.t.Context(), method, u, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func (e *injectEnv) seenAll() []seenRequest {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]seenRequest(nil), e.seen...)
}

func (e *injectEnv) Notes() []secrets.AuditNote {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]secrets.AuditNote(nil), e.notes...)
}

const (
	openaiKey   = "sk-proj-REALKEY-0123456789abcdef"
	githubToken = "ghp_REALTOKEN0123456789abcdef"
	customValue = "custom-REALVALUE-0123456789"
	otherValue  = "other-REALVALUE-0123456789"
)

func TestInjectSentinelBecomesKey(t *testing.T) {
	e := newInjectEnv(t)
	if _, err := e.store.Set("openai", "", secrets.New(openaiKey)); err != nil {
		t.Fatal(err)
	}
	env, _ := e.store.GuestEnv("sb-test")
	if len(env) != 1 || env[0] != "OPENAI_API_KEY="+secrets.Sentinel {
		t.Fatalf("guest env = %v", env)
	}
	for _, h2 := range []bool{false, true} {
		got, code := e.do(e.client(h2), http.MethodPost, "https://api.openai.com/v1/chat/completions",
			http.Header{"Authorization": {"Bearer " + secrets.Sentinel}}, `{"model":"x"}`)
		if code != http.StatusOK || got.Header.Get("Authorization") != "Bearer "+openaiKey {
			t.Errorf("h2=%v: status %d, server got Authorization %q", h2, code, got.Header.Get("Authorization"))
		}
		if got.Body != `{"model":"x"}` {
			t.Errorf("h2=%v: body %q", h2, got.Body)
		}
	}
	// A change reaches the running proxy without a restart.
	if _, err := e.store.Set("openai", "sb-test", secrets.New(openaiKey+"-sandbox")); err != nil {
		t.Fatal(err)
	}
	got, _ := e.do(e.client(false), http.MethodGet, "https://api.openai.com/v1/models", nil, "")
	if got.Header.Get("Authorization") != "Bearer "+openaiKey+"-sandbox" {
		t.Errorf("after a sandbox-scoped set: Authorization %q", got.Header.Get("Authorization"))
	}
}

func TestInjectGitBasicAdded(t *testing.T) {
	e := newInjectEnv(t)
	if _, err := e.store.Set("github", "", secrets.New(githubToken)); err != nil {
		t.Fatal(err)
	}
	// git's first request carries no credentials.
	got, _ := e.do(e.client(false), http.MethodGet, "https://github.com/o/r.git/info/refs?service=git-upload-pack", nil, "")
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+githubToken))
	if got.Header.Get("Authorization") != want {
		t.Errorf("git request Authorization = %q, want the token as basic auth", got.Header.Get("Authorization"))
	}
}

func TestInjectPlaceholder(t *testing.T) {
	e := newInjectEnv(t)
	ent, err := e.store.SetCustom(secrets.Custom{Env: "MY_TOKEN", Hosts: []string{"api.test"}}, secrets.New(customValue))
	if err != nil {
		t.Fatal(err)
	}
	// other.test is intercepted only because another secret is bound to it.
	if _, err := e.store.SetCustom(secrets.Custom{Env: "OTHER_TOKEN", Hosts: []string{"other.test"}}, secrets.New(otherValue)); err != nil {
		t.Fatal(err)
	}
	ph := ent.Placeholder
	hdr := http.Header{"X-Token": {ph}}
	body := `{"token":"` + ph + `"}`
	for _, h2 := range []bool{false, true} {
		got, _ := e.do(e.client(h2), http.MethodPost, "https://api.test/v1/x", hdr, body)
		if got.Header.Get("X-Token") != customValue || got.Body != `{"token":"`+customValue+`"}` {
			t.Errorf("h2=%v: bound host got X-Token %q body %q", h2, got.Header.Get("X-Token"), got.Body)
		}
		if cl := got.Header.Get("Content-Length"); h2 == false && cl != fmt.Sprint(len(got.Body)) {
			t.Errorf("Content-Length %s for a %d-byte body", cl, len(got.Body))
		}
	}

	// The same placeholder to another allowed host: unchanged, and reported.
	got, _ := e.do(e.client(false), http.MethodPost, "https://other.test/collect", hdr, body)
	if got.Header.Get("X-Token") != ph || got.Body != body {
		t.Errorf("foreign host got X-Token %q body %q, want the placeholder unchanged", got.Header.Get("X-Token"), got.Body)
	}
	plainURL := "http://other.test/collect?t=" + ph
	got, _ = e.do(e.client(false), http.MethodGet, plainURL, nil, "")
	if got.Query != "t="+ph {
		t.Errorf("plain HTTP foreign host got query %q", got.Query)
	}
	// A host with no secret is tunnelled: unchanged, and not visible to the proxy.
	got, _ = e.do(&http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: e.addr}),
		TLSClientConfig: &tls.Config{RootCAs: upstreamPool},
	}}, http.MethodGet, "https://tunnel.test/x", hdr, "")
	if got.Header.Get("X-Token") != ph {
		t.Errorf("tunnelled host got X-Token %q", got.Header.Get("X-Token"))
	}

	type key struct{ Host, Secret, Kind, Where string }
	var gotNotes []key
	for _, n := range e.Notes() {
		gotNotes = append(gotNotes, key{n.Host, n.Secret, n.Kind, n.Where})
	}
	want := []key{
		{"other.test", "MY_TOKEN", secrets.NotePlaceholder, "header X-Token"},
		{"other.test", "MY_TOKEN", secrets.NotePlaceholder, "body"},
		{"other.test", "MY_TOKEN", secrets.NotePlaceholder, "url"},
	}
	if fmt.Sprint(gotNotes) != fmt.Sprint(want) {
		t.Errorf("notes = %v, want %v", gotNotes, want)
	}
}

// TestInjectNoSecretInLogs runs the proxy and injector with known secrets
// through every path (injection, substitution, foreign hosts, a denied host,
// an unreachable upstream) with debug logging, and greps every log record,
// audit event and note for the values (also base64-encoded as git sends
// them).
func TestInjectNoSecretInLogs(t *testing.T) {
	e := newInjectEnv(t)
	for svc, v := range map[string]string{"openai": openaiKey, "github": githubToken} {
		if _, err := e.store.Set(svc, "", secrets.New(v)); err != nil {
			t.Fatal(err)
		}
	}
	ent, err := e.store.SetCustom(secrets.Custom{Env: "MY_TOKEN", Hosts: []string{"api.test"}}, secrets.New(customValue))
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", secrets.MaxBodyBytes) + ent.Placeholder
	c := e.client(false)
	e.do(c, http.MethodPost, "https://api.openai.com/v1/chat?key="+secrets.Sentinel, http.Header{"Authorization": {"Bearer " + secrets.Sentinel}}, "{}")
	e.do(c, http.MethodPost, "https://github.com/o/r.git/git-receive-pack", nil, "pack")
	e.do(c, http.MethodPost, "https://api.test/x?t="+ent.Placeholder, http.Header{"X-Token": {ent.Placeholder}}, ent.Placeholder)
	e.do(c, http.MethodPost, "https://api.test/big", nil, big)
	e.do(c, http.MethodPost, "https://api.openai.com/leak", http.Header{"X-Leak": {ent.Placeholder}}, "")
	e.do(c, http.MethodPost, "https://api.openai.com/leak", nil, "data="+ent.Placeholder)
	e.do(c, http.MethodGet, "http://other.test/leak?k="+ent.Placeholder, nil, "")
	if _, code := e.do(c, http.MethodGet, "http://denied.test/x?k="+ent.Placeholder, nil, ""); code != http.StatusForbidden {
		t.Errorf("denied host: status %d", code)
	}
	// An upstream that fails (port 1 has no remap and nothing listens).
	resp, err := c.Get("http://api.openai.com:1/unreachable")
	if err == nil {
		resp.Body.Close()
	}

	logs := e.logs.String()
	if !strings.Contains(logs, "credential injected") || !strings.Contains(logs, "over the placeholder limit") || !strings.Contains(logs, "exfiltration") {
		t.Fatalf("the logs miss records the check relies on:\n%s", logs)
	}
	e.mu.Lock()
	ev, _ := json.Marshal(e.events)
	notes, _ := json.Marshal(e.notes)
	var reasons []string
	for _, n := range e.notes {
		reasons = append(reasons, n.Reason(), fmt.Sprintf("%+v", n))
	}
	e.mu.Unlock()
	all := logs + string(ev) + string(notes) + strings.Join(reasons, "\n")
	for _, v := range []string{openaiKey, githubToken, customValue} {
		for _, form := range []string{v, base64.StdEncoding.EncodeToString([]byte("x-access-token:" + v))} {
			if strings.Contains(all, form) {
				t.Errorf("a secret reached the logs or the audit records")
			}
		}
	}
	wheres := map[string]bool{}
	for _, n := range e.Notes() {
		wheres[strings.Fields(n.Where)[0]] = true
	}
	if !wheres["header"] || !wheres["body"] || !wheres["url"] {
		t.Errorf("notes = %v, want the header, body and url leaks", e.Notes())
	}
}

// TestInjectTransparent: the transparent path (SNI decides) injects too.
func TestInjectTransparent(t *testing.T) {
	e := newInjectEnv(t)
	if _, err := e.store.Set("openai", "", secrets.New(openaiKey)); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { e.p.HandleConn(ctx, c, netip.MustParseAddrPort("198.18.0.7:443")) })
		}
	})
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", l.Addr().String())
		},
		TLSClientConfig: &tls.Config{RootCAs: proxyPool, NextProtos: []string{"http/1.1"}},
	}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		l.Close()
		cancel()
		wg.Wait()
	})
	got, _ := e.do(&http.Client{Transport: tr, Timeout: 20 * time.Second}, http.MethodGet, "https://api.openai.com/v1/models",
		http.Header{"Authorization": {"Bearer " + secrets.Sentinel}}, "")
	if got.Header.Get("Authorization") != "Bearer "+openaiKey {
		t.Errorf("transparent: Authorization %q", got.Header.Get("Authorization"))
	}
}

// valueForms are the spellings of v a guest could decode: raw, and the
// base64 of a credential holding it.
func valueForms(v string) []string {
	return []string{v, base64.StdEncoding.EncodeToString([]byte("x-access-token:" + v)), base64.StdEncoding.EncodeToString([]byte(v))}
}

// Gap 5 of the isolation review: an endpoint that echoes what it got
// handed the real value back to the guest. Now what comes back is the
// placeholder or sentinel, compressed or not, over HTTP/1.1 and HTTP/2.
func TestInjectEchoScrubbed(t *testing.T) {
	e := newInjectEnv(t)
	for svc, v := range map[string]string{"openai": openaiKey, "github": githubToken} {
		if _, err := e.store.Set(svc, "", secrets.New(v)); err != nil {
			t.Fatal(err)
		}
	}
	ent, err := e.store.SetCustom(secrets.Custom{Env: "MY_TOKEN", Hosts: []string{"api.test"}}, secrets.New(customValue))
	if err != nil {
		t.Fatal(err)
	}
	ph := ent.Placeholder
	for _, h2 := range []bool{false, true} {
		for _, c := range []struct {
			url    string
			hdr    http.Header
			body   string
			secret string
		}{
			{"https://api.openai.com/echo", http.Header{"Authorization": {"Bearer " + secrets.Sentinel}}, "", openaiKey},
			{"https://api.openai.com/echo?gz=1", http.Header{"Authorization": {"Bearer " + secrets.Sentinel}, "Accept-Encoding": {"br, gzip"}}, "", openaiKey},
			{"https://github.com/echo", nil, "", githubToken},
			{"https://api.test/echo", http.Header{"X-Token": {ph}}, `{"t":"` + ph + `"}`, customValue},
			{"https://api.test/echo?gz=1", http.Header{"X-Token": {"Bearer " + ph}}, strings.Repeat("x", 70000) + ph, customValue},
		} {
			code, hdr, body := e.fetch(e.client(h2), http.MethodPost, c.url, c.hdr, c.body)
			if code != http.StatusOK {
				t.Errorf("h2=%v %s: status %d %s", h2, c.url, code, body)
				continue
			}
			var all strings.Builder
			hdr.Write(&all)
			all.WriteString(body)
			for _, f := range valueForms(c.secret) {
				if strings.Contains(all.String(), f) {
					t.Errorf("h2=%v %s: the real value came back to the guest (%d bytes)", h2, c.url, len(f))
				}
			}
			if c.secret == customValue && !strings.Contains(body, ph) {
				t.Errorf("h2=%v %s: the placeholder is not where the value was", h2, c.url)
			}
		}
	}
	// An encoding the proxy cannot decode is refused for such a host.
	code, _, body := e.fetch(e.client(false), http.MethodGet, "https://api.openai.com/echo?br=1", http.Header{"Authorization": {"Bearer " + secrets.Sentinel}}, "")
	if code == http.StatusOK || strings.Contains(body, openaiKey) {
		t.Errorf("br response: status %d body %q, want refused", code, body)
	}
}

// Gap 6: a real value on its way to a host it does not belong to, or in
// clear, is blocked (raw, URL-encoded, base64, Basic credentials), and the
// upstream sees nothing of it.
func TestInjectRealValueBlocked(t *testing.T) {
	e := newInjectEnv(t)
	if _, err := e.store.Set("openai", "", secrets.New(openaiKey)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.SetCustom(secrets.Custom{Env: "MY_TOKEN", Hosts: []string{"api.test"}}, secrets.New(customValue)); err != nil {
		t.Fatal(err)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("user:"+customValue))
	for _, c := range []struct {
		url    string
		hdr    http.Header
		body   string
		secret string
	}{
		{"http://api.openai.com/v1", http.Header{"Authorization": {"Bearer " + openaiKey}}, "", openaiKey}, // own host, but in clear
		{"http://other.test/x?k=" + url.QueryEscape(openaiKey), nil, "", openaiKey},
		{"https://api.openai.com/x", http.Header{"X-Basic": {basic}}, "", customValue},
		{"https://api.openai.com/x", http.Header{"X-B64": {base64.URLEncoding.EncodeToString([]byte("p" + customValue))}}, "", customValue},
		{"https://api.test/x", nil, `{"k":"` + openaiKey + `"}`, openaiKey},
		{"https://api.openai.com/x", nil, "token=" + url.PathEscape(customValue), customValue}, // another secret's host
		{"http://other.test/x", nil, strings.Repeat("a", 3<<20) + openaiKey, openaiKey},        // large, streamed
	} {
		before := len(e.seenAll())
		code, _, body := e.fetch(e.client(false), http.MethodPost, c.url, c.hdr, c.body)
		if code == http.StatusOK {
			t.Errorf("%s %v: status 200, want blocked", c.url, c.hdr)
		} else if code != 0 && !strings.Contains(body, "real value of secret") {
			t.Errorf("%s: status %d body %q, want the explained 403", c.url, code, body)
		}
		u, _ := url.Parse(c.url)
		for _, seen := range e.seenAll()[before:] {
			if secrets.NormalizeHost(seen.Host) != u.Hostname() {
				continue // a slow upstream still reading an earlier case
			}
			var all strings.Builder
			seen.Header.Write(&all)
			all.WriteString(seen.Query + seen.Body)
			if strings.Contains(all.String(), c.secret) {
				t.Errorf("%s: the upstream received the real value", c.url)
			}
		}
	}
	// An ordinary request to the same host still goes through.
	if code, _, body := e.fetch(e.client(false), http.MethodGet, "http://other.test/x", http.Header{"X-Token": {"x"}}, ""); code != http.StatusOK {
		t.Errorf("plain request to other.test: %d %s", code, body)
	}
}

// Gap 7: a service's credential goes only to its API port (443) unless a
// rule names another port of its host.
func TestCredentialsOnlyOnAPIPort(t *testing.T) {
	st := secrets.NewStore(secrets.Options{Dir: t.TempDir()})
	if _, err := st.Set("openai", "", secrets.New(openaiKey)); err != nil {
		t.Fatal(err)
	}
	in := secrets.NewInjector(st, "sb", nil, nil)
	extra := map[string]bool{}
	in.ExtraPort = func(host string, port uint16) bool { return extra[fmt.Sprintf("%s:%d", host, port)] }
	for _, c := range []struct {
		url, allow string
		want       bool
	}{
		{"https://api.openai.com/v1", "", true},
		{"https://api.openai.com:443/v1", "", true},
		{"https://api.openai.com:8443/v1", "", false},
		{"https://api.openai.com:8443/v1", "api.openai.com:8443", true},
		{"https://api.openai.com:9443/v1", "api.openai.com:8443", false},
	} {
		clear(extra)
		if c.allow != "" {
			extra[c.allow] = true
		}
		r, _ := http.NewRequest(http.MethodGet, c.url, nil)
		r.Header.Set("Authorization", "Bearer "+secrets.Sentinel)
		if err := in.ModifyRequest(r); err != nil {
			t.Fatal(err)
		}
		if got := r.Header.Get("Authorization") == "Bearer "+openaiKey; got != c.want {
			t.Errorf("%s (rule %q): injected=%v, want %v", c.url, c.allow, got, c.want)
		}
	}
}
