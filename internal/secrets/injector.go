package secrets

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// MaxBodyBytes is the largest request body in which custom placeholders are
// replaced. A larger body (by Content-Length, or once more than this was
// read) goes upstream unchanged, and that is logged.
const MaxBodyBytes = 1 << 20

// minValueScan is the shortest real value searched for in requests to
// foreign hosts (shorter ones would match by chance).
const minValueScan = 8

// reloadRetry is how long a failed load (unreadable file, keyring error) is
// kept before trying again when the file has not changed.
const reloadRetry = 5 * time.Second

// Note kinds.
const (
	// NotePlaceholder: a custom secret's placeholder went to a host it is
	// not bound to.
	NotePlaceholder = "placeholder"
	// NoteValue: the real value of a secret went to a host it is not bound
	// to (it reached the guest some other way).
	NoteValue = "value"
)

// AuditNote reports a possible exfiltration attempt: a placeholder or real
// value of a secret in a request to a host the secret is not bound to. The
// request goes out unchanged. A note never carries the value.
type AuditNote struct {
	Time    time.Time
	Sandbox string // id
	// Host is the request's destination.
	Host string
	// Secret is the service name or the custom secret's variable.
	Secret string
	// Kind is NotePlaceholder or NoteValue.
	Kind string
	// Where is "header NAME", "url" or "body".
	Where string
	// BoundHosts are the hosts the secret belongs to.
	BoundHosts []string
}

// Reason is a one-line description for the audit log.
func (n AuditNote) Reason() string {
	return fmt.Sprintf("possible exfiltration: %s of secret %s in %s to %s (bound to %s); sent unchanged",
		n.Kind, n.Secret, n.Where, n.Host, strings.Join(n.BoundHosts, ", "))
}

// Injector puts one sandbox's secrets on the wire: the proxy calls
// Intercept for each HTTPS connection and ModifyRequest for each request it
// sees in clear (after the policy allowed it). It is safe for concurrent
// use.
//
// It picks up store changes without a restart: every call stats the store
// file (one stat syscall) and reloads it when its mtime, size or inode
// changed; with the Secret Service that reload reads the values of the
// sandbox's secrets over D-Bus.
type Injector struct {
	store   *Store
	sandbox string
	log     *slog.Logger
	audit   func(AuditNote)

	mu sync.Mutex
	// cur is the loaded state; guarded by mu.
	cur *snapshot
	// stamp identifies the file cur was loaded from; guarded by mu.
	stamp stamp
	// retryAt, when not zero, is when a partly failed load is retried;
	// guarded by mu.
	retryAt time.Time
}

// NewInjector returns the injector of sandboxID. log receives records
// (never values or headers); audit, which may be nil, receives possible
// exfiltration attempts, synchronously, possibly from the goroutine sending
// a request body. Nothing is read until the first call.
func NewInjector(store *Store, sandboxID string, log *slog.Logger, audit func(AuditNote)) *Injector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if audit == nil {
		audit = func(AuditNote) {}
	}
	return &Injector{store: store, sandbox: sandboxID, log: log.With("component", "secrets"), audit: audit}
}

type serviceBinding struct {
	p     Provider
	value string
}

type customBinding struct {
	env, placeholder, value string
	hosts                   []string
}

// needle is a string that must not reach hosts other than hosts.
type needle struct {
	s      string
	secret string
	kind   string
	hosts  []string
}

type snapshot struct {
	services []serviceBinding
	customs  []customBinding
	needles  []needle
}

func buildSnapshot(bs []Binding) *snapshot {
	s := &snapshot{}
	for _, b := range bs {
		v := b.Value.Reveal()
		if b.Custom {
			s.customs = append(s.customs, customBinding{env: b.Name, placeholder: b.Placeholder, value: v, hosts: b.Hosts})
			s.needles = append(s.needles, needle{s: b.Placeholder, secret: b.Name, kind: NotePlaceholder, hosts: b.Hosts})
		} else {
			p, ok := LookupProvider(b.Name)
			if !ok {
				continue
			}
			s.services = append(s.services, serviceBinding{p: p, value: v})
		}
		if len(v) >= minValueScan {
			s.needles = append(s.needles, needle{s: v, secret: b.Name, kind: NoteValue, hosts: b.BoundHosts()})
		}
	}
	return s
}

// snap returns the current state, reloading it if the store changed.
func (in *Injector) snap() *snapshot {
	st, statErr := in.store.stamp()
	in.mu.Lock()
	defer in.mu.Unlock()
	if statErr != nil {
		in.log.Warn("check secrets file", "sandbox", in.sandbox, "err", statErr)
		if in.cur != nil {
			return in.cur
		}
		return &snapshot{}
	}
	if in.cur != nil && st == in.stamp && (in.retryAt.IsZero() || time.Now().Before(in.retryAt)) {
		return in.cur
	}
	bs, err := in.store.Effective(in.sandbox)
	in.retryAt = time.Time{}
	if err != nil {
		// Errors name secrets, never values. What loaded is still used; the
		// rest fails closed (the sentinel goes upstream and is refused).
		in.log.Warn("load secrets", "sandbox", in.sandbox, "err", err)
		in.retryAt = time.Now().Add(reloadRetry)
	}
	if in.cur != nil {
		in.log.Debug("secrets reloaded", "sandbox", in.sandbox, "count", len(bs))
	}
	in.cur = buildSnapshot(bs)
	in.stamp = st
	return in.cur
}

// Intercept reports whether a secret of this sandbox applies to host (the
// port is ignored), so the proxy must terminate TLS to it.
func (in *Injector) Intercept(host string, _ uint16) bool {
	host = NormalizeHost(host)
	s := in.snap()
	for _, sb := range s.services {
		if _, ok := sb.p.ruleFor(host, sb.value); ok {
			return true
		}
	}
	for _, c := range s.customs {
		if slices.Contains(c.hosts, host) {
			return true
		}
	}
	return false
}

// GuestEnv returns the VAR=VALUE lines for the guest: a sentinel for each
// service in effect, the placeholder of each custom secret. On error it
// logs and returns what it can (nothing), so agent CLIs miss their key but
// nothing leaks.
func (in *Injector) GuestEnv() []string {
	env, err := in.store.GuestEnv(in.sandbox)
	if err != nil {
		in.log.Warn("guest environment for secrets", "sandbox", in.sandbox, "err", err)
	}
	return env
}

// ModifyRequest puts this sandbox's credentials into r, a request to an
// allowed destination the proxy sees in clear:
//   - a service's header is overwritten (or added, per the provider table)
//     when r goes to one of the service's hosts;
//   - custom placeholders are replaced by their values in header values
//     (including inside Basic credentials), the URL path and query, and
//     bodies up to MaxBodyBytes (Content-Length is fixed), when r goes to
//     one of the secret's hosts;
//   - a placeholder or real value in a request to any other host is left
//     as is and reported through audit (bodies are scanned as they stream).
//
// The destination is r.URL's host (the proxy's vetted target); the port is
// ignored.
func (in *Injector) ModifyRequest(r *http.Request) {
	host := NormalizeHost(r.URL.Host)
	if host == "" {
		host = NormalizeHost(r.Host)
	}
	s := in.snap()
	if len(s.services) == 0 && len(s.customs) == 0 {
		return
	}
	var foreign []needle
	for _, n := range s.needles {
		if !slices.Contains(n.hosts, host) {
			foreign = append(foreign, n)
		}
	}
	var bound []customBinding
	for _, c := range s.customs {
		if slices.Contains(c.hosts, host) {
			bound = append(bound, c)
		}
	}
	reported := make([]bool, len(foreign))
	in.scanHeadersURL(r, host, foreign, reported)

	for _, c := range bound {
		substituteHeaders(r.Header, c.placeholder, c.value)
		// Not in the URL: servers echo paths and queries back (404 pages,
		// error messages), which would hand the real value to the guest.
	}
	for _, sb := range s.services {
		if rule, ok := sb.p.ruleFor(host, sb.value); ok && rule.apply(r, sb.value) {
			in.log.Debug("credential injected", "sandbox", in.sandbox, "service", sb.p.Name, "host", host, "header", rule.Header)
		}
	}
	in.body(r, host, bound, foreign, reported)
}

func (in *Injector) report(host string, n needle, where string) {
	in.log.Warn("possible secret exfiltration; request sent unchanged", "sandbox", in.sandbox, "host", host,
		"secret", n.secret, "kind", n.kind, "where", where)
	in.audit(AuditNote{
		Time: time.Now(), Sandbox: in.sandbox, Host: host, Secret: n.secret, Kind: n.kind, Where: where,
		BoundHosts: slices.Clone(n.hosts),
	})
}

// scanHeadersURL reports foreign needles in headers and the URL.
func (in *Injector) scanHeadersURL(r *http.Request, host string, foreign []needle, reported []bool) {
	if len(foreign) == 0 {
		return
	}
	check := func(text, where string) {
		for i, n := range foreign {
			if !reported[i] && strings.Contains(text, n.s) {
				reported[i] = true
				in.report(host, n, where)
			}
		}
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			check(v, "header "+k)
			if user, pass, ok := basicCredentials(v); ok {
				check(user+":"+pass, "header "+k)
			}
		}
	}
	check(r.URL.Path, "url")
	check(r.URL.RawPath, "url")
	check(r.URL.RawQuery, "url")
	if q, err := url.QueryUnescape(r.URL.RawQuery); err == nil {
		check(q, "url")
	}
}

// basicCredentials decodes "Basic base64(user:pass)".
func basicCredentials(v string) (string, string, bool) {
	const prefix = "basic "
	if len(v) < len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return "", "", false
	}
	dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v[len(prefix):]))
	if err != nil {
		return "", "", false
	}
	user, pass, ok := strings.Cut(string(dec), ":")
	return user, pass, ok
}

func substituteHeaders(h http.Header, placeholder, value string) {
	for k, vs := range h {
		for i, v := range vs {
			if strings.Contains(v, placeholder) {
				vs[i] = strings.ReplaceAll(v, placeholder, value)
				continue
			}
			if user, pass, ok := basicCredentials(v); ok && strings.Contains(user+":"+pass, placeholder) {
				cred := strings.ReplaceAll(user+":"+pass, placeholder, value)
				vs[i] = "Basic " + base64.StdEncoding.EncodeToString([]byte(cred))
			}
		}
		h[k] = vs
	}
}

// body substitutes bound placeholders in r's body (up to MaxBodyBytes) and
// scans it for foreign needles.
func (in *Injector) body(r *http.Request, host string, bound []customBinding, foreign []needle, reported []bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	var pending []needle
	for i, n := range foreign {
		if !reported[i] {
			pending = append(pending, n)
		}
	}
	scan := func(rc io.ReadCloser) io.ReadCloser {
		if len(pending) == 0 {
			return rc
		}
		return newScanBody(rc, pending, func(n needle) { in.report(host, n, "body") })
	}
	if len(bound) == 0 {
		r.Body = scan(r.Body)
		return
	}
	names := make([]string, len(bound))
	for i, c := range bound {
		names[i] = c.env
	}
	tooLarge := func() {
		in.log.Warn("request body over the placeholder limit; sent unchanged", "sandbox", in.sandbox, "host", host,
			"secrets", strings.Join(names, ","), "limit_bytes", MaxBodyBytes)
	}
	if r.ContentLength > MaxBodyBytes {
		tooLarge()
		r.Body = scan(r.Body)
		return
	}
	orig := r.Body
	buf, err := io.ReadAll(io.LimitReader(orig, MaxBodyBytes+1))
	if err != nil {
		// Hand on what was read and then the error: the transport fails the
		// request as it would have.
		r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), errReader{err}), orig}
		return
	}
	if len(buf) > MaxBodyBytes {
		tooLarge()
		r.Body = scan(readCloser{io.MultiReader(bytes.NewReader(buf), orig), orig})
		return
	}
	if len(pending) > 0 {
		sb := newScanBody(io.NopCloser(nil), pending, func(n needle) { in.report(host, n, "body") })
		sb.scan(buf)
	}
	out := buf
	for _, c := range bound {
		out = bytes.ReplaceAll(out, []byte(c.placeholder), []byte(c.value))
	}
	r.Body = readCloser{bytes.NewReader(out), orig}
	r.ContentLength = int64(len(out))
	r.TransferEncoding = nil
	r.Header.Del("Content-Length")
	r.Header.Del("Expect")
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(out)), nil }
}

type readCloser struct {
	io.Reader
	io.Closer
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// scanBody reports needles in a body as it streams, across read boundaries.
type scanBody struct {
	rc      io.ReadCloser
	needles []needle
	found   []bool
	tail    []byte
	keep    int
	report  func(needle)
}

func newScanBody(rc io.ReadCloser, needles []needle, report func(needle)) *scanBody {
	keep := 0
	for _, n := range needles {
		keep = max(keep, len(n.s)-1)
	}
	return &scanBody{rc: rc, needles: needles, found: make([]bool, len(needles)), keep: keep, report: report}
}

func (b *scanBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.scan(p[:n])
	}
	return n, err
}

func (b *scanBody) Close() error { return b.rc.Close() }

func (b *scanBody) scan(chunk []byte) {
	buf := append(b.tail, chunk...)
	for i, n := range b.needles {
		if !b.found[i] && bytes.Contains(buf, []byte(n.s)) {
			b.found[i] = true
			b.report(n)
		}
	}
	if len(buf) > b.keep {
		buf = buf[len(buf)-b.keep:]
	}
	b.tail = append(b.tail[:0:0], buf...)
}
