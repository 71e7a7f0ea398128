package secrets

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxBodyBytes is the largest request body in which custom placeholders are
// replaced. A larger body (by Content-Length, or once more than this was
// read) goes upstream unchanged, and that is logged.
const MaxBodyBytes = 1 << 20

// MaxBufferedBodies is the most request bodies one sandbox's injector
// buffers at once; further ones are refused until a slot is free.
const MaxBufferedBodies = 32

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
	// Blocked says the request was refused (a real value); else it went
	// out unchanged (a placeholder).
	Blocked bool
}

// Reason is a one-line description for the audit log.
func (n AuditNote) Reason() string {
	outcome := "sent unchanged"
	if n.Blocked {
		outcome = "blocked"
	}
	return fmt.Sprintf("possible exfiltration: %s of secret %s in %s to %s (bound to %s); %s",
		n.Kind, n.Secret, n.Where, n.Host, strings.Join(n.BoundHosts, ", "), outcome)
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
	// ExtraPort, when set, reports whether credentials for host may also
	// go to port (besides 443): a policy rule naming that host and port.
	// Set it before first use.
	ExtraPort func(host string, port uint16) bool

	store   *Store
	sandbox string
	log     *slog.Logger
	audit   func(AuditNote)

	// bodies holds a slot per request body being buffered for
	// substitution: at most MaxBufferedBodies at once (each up to
	// MaxBodyBytes, twice), however many streams the guest opens.
	bodies chan struct{}

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
	return &Injector{store: store, sandbox: sandboxID, log: log.With("component", "secrets"), audit: audit,
		bodies: make(chan struct{}, MaxBufferedBodies)}
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
// logs a warning and returns what it can: nothing when the index cannot be
// read (agent CLIs miss their key but nothing leaks), everything but the
// custom secrets under reserved variables (Store.GuestEnv) otherwise.
func (in *Injector) GuestEnv() []string {
	env, err := in.store.GuestEnv(in.sandbox)
	if err != nil {
		in.log.Warn("guest environment for secrets", "sandbox", in.sandbox, "err", err)
	}
	return env
}

// ModifyRequest puts this sandbox's credentials into r, a request to an
// allowed destination the proxy sees in clear, and refuses requests that
// would carry a real value where it must not go. It returns a
// *BlockedError (and reports it through audit) when:
//   - r is plain HTTP and carries the real value of any secret: real values
//     travel only inside TLS;
//   - r carries the real value of a secret to a host the secret is not
//     bound to.
//
// A real value is found raw, URL-encoded, base64-encoded (Basic
// credentials included) in headers, the URL and the body (streamed: the
// body ends with the error before the value's bytes go out).
//
// Otherwise, on HTTPS only and only towards port 443 (or a port
// ExtraPort accepts):
//   - a service's header is overwritten (or added, per the provider table)
//     when r goes to one of the service's hosts;
//   - custom placeholders are replaced by their values in header values
//     (including inside Basic credentials) and bodies up to MaxBodyBytes
//     (Content-Length is fixed), when r goes to one of the secret's hosts;
//   - Accept-Encoding is narrowed to gzip so ModifyResponse can scrub the
//     answer.
//
// A placeholder in a request to any other host is left as is and reported.
// The destination is r.URL's host and port (the proxy's vetted target).
func (in *Injector) ModifyRequest(r *http.Request) error {
	host := NormalizeHost(r.URL.Host)
	if host == "" {
		host = NormalizeHost(r.Host)
	}
	s := in.snap()
	if len(s.services) == 0 && len(s.customs) == 0 {
		return nil
	}
	clear := r.URL.Scheme != "https"
	if !clear && s.appliesTo(host) {
		// Partial answers are refused from such hosts (ModifyResponse):
		// ask for the whole body.
		r.Header.Del("Range")
		r.Header.Del("If-Range")
	}
	var forms []form
	var formOf []needle // formOf[i] is the secret forms[i] spells
	var placeholders []needle
	for _, n := range s.needles {
		foreign := !slices.Contains(n.hosts, host)
		switch {
		case n.kind == NoteValue && (clear || foreign):
			for _, f := range encodedForms(n.s, "") {
				forms = append(forms, f)
				formOf = append(formOf, n)
			}
		case n.kind == NotePlaceholder && foreign:
			placeholders = append(placeholders, n)
		}
	}
	why := "it is not bound to that host"
	if clear {
		why = "real values travel only inside HTTPS"
	}
	block := func(i int, where string) error {
		n := formOf[i]
		in.report(host, n, where, true)
		return &BlockedError{Secret: n.secret, Where: where, Host: host, Why: why}
	}
	if err := in.scanHeadersURL(r, host, forms, placeholders, block); err != nil {
		return err
	}
	if len(forms) > 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = newFilterReader(r.Body, forms, true, func(i int) error { return block(i, "body") })
	}
	if len(placeholders) > 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = newScanBody(r.Body, placeholders, func(n needle) { in.report(host, n, "body", false) })
	}
	if clear {
		return nil
	}
	port := 443
	if p := r.URL.Port(); p != "" {
		port, _ = strconv.Atoi(p)
	}
	injectHere := port == 443 || (in.ExtraPort != nil && port > 0 && port < 65536 && in.ExtraPort(host, uint16(port)))
	var bound []customBinding
	for _, c := range s.customs {
		if slices.Contains(c.hosts, host) {
			bound = append(bound, c)
		}
	}
	var services []serviceBinding
	for _, sb := range s.services {
		if _, ok := sb.p.ruleFor(host, sb.value); ok {
			services = append(services, sb)
		}
	}
	if len(bound) == 0 && len(services) == 0 {
		return nil
	}
	if !injectHere {
		in.log.Info("credentials not injected: not the service's API port (443) and no rule names this port",
			"sandbox", in.sandbox, "host", host, "port", port)
		return nil
	}
	for _, c := range bound {
		substituteHeaders(r.Header, c.placeholder, c.value)
		// Not in the URL: servers echo paths and queries back (404 pages,
		// error messages), which would hand the real value to the guest.
	}
	for _, sb := range services {
		if rule, ok := sb.p.ruleFor(host, sb.value); ok && rule.apply(r, sb.value) {
			in.log.Debug("credential injected", "sandbox", in.sandbox, "service", sb.p.Name, "host", host, "header", rule.Header)
		}
	}
	// Only encodings ModifyResponse can decode come back.
	r.Header.Set("Accept-Encoding", "gzip")
	return in.body(r, host, bound)
}

// ModifyResponse scrubs the answer of a host this sandbox's secrets are
// sent to: every real value (raw, URL-encoded or base64, as in requests)
// in its headers and body is put back to what the guest knows (the
// placeholder, or Sentinel for a service), so an endpoint that echoes
// what it received hands the guest nothing new. gzip and deflate bodies
// are decoded to be scrubbed (and sent on decoded); a body in any other
// encoding is refused with an error. Trailers are not scrubbed: the
// proxy drops them for such hosts.
func (in *Injector) ModifyResponse(resp *http.Response) error {
	if resp.Request == nil || resp.Request.URL == nil || resp.Request.URL.Scheme != "https" {
		return nil
	}
	host := NormalizeHost(resp.Request.URL.Host)
	s := in.snap()
	if !s.appliesTo(host) {
		return nil
	}
	forms := s.scrubForms()
	if len(forms) == 0 {
		return nil
	}
	for k, vs := range resp.Header {
		if nameHasForm(k, forms) {
			delete(resp.Header, k)
			in.log.Warn("response header named after a secret value dropped", "sandbox", in.sandbox, "host", host)
			continue
		}
		for i, v := range vs {
			if out, changed := scrubString(v, forms); changed {
				vs[i] = out
				in.log.Warn("secret value in a response header replaced", "sandbox", in.sandbox, "host", host, "header", k)
			}
		}
	}
	resp.Trailer = nil
	if resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	body := resp.Body
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// An upgraded stream (a WebSocket) cannot be scanned: its
		// messages may be compressed (permessage-deflate) or cut into
		// fragments with frame headers between them.
		body.Close()
		return refusedError(fmt.Sprintf("upgrade refused: %s switched protocols (WebSocket), and sbx cannot scan such a stream for the secrets it sends there", host))
	}
	if resp.StatusCode == http.StatusPartialContent {
		// Pieces of an echo, each too short to match, make it whole.
		body.Close()
		return refusedError(fmt.Sprintf("response refused: %s answered with part of a body (206), which sbx cannot scan whole for the secrets it sends there", host))
	}
	// Every coding the response lists, across all its Content-Encoding
	// fields: one layer is decoded and scanned, more are refused (a body
	// coded twice would reach the guest still coded, and unscanned).
	var codings []string
	for _, v := range resp.Header.Values("Content-Encoding") {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	enc := strings.Join(codings, ", ")
	switch enc {
	case "":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			body.Close()
			return fmt.Errorf("response from %s: gzip body: %w", host, err)
		}
		body = readCloser{zr, body}
	case "deflate":
		zr, err := zlib.NewReader(body)
		if err != nil {
			body.Close()
			return fmt.Errorf("response from %s: deflate body: %w", host, err)
		}
		body = readCloser{zr, body}
	default:
		body.Close()
		return refusedError(fmt.Sprintf("response refused: %s answered with Content-Encoding %q, which sbx cannot scan for the secrets it sends there", host, enc))
	}
	resp.Header.Del("Content-Encoding")
	resp.Header.Del("Content-Length")
	resp.ContentLength = -1
	resp.Uncompressed = true
	resp.Body = &noTrailers{resp: resp, ReadCloser: newFilterReader(body, forms, false, func(int) error {
		in.log.Warn("secret value in a response body replaced", "sandbox", in.sandbox, "host", host)
		return nil
	})}
	return nil
}

// nameHasForm reports whether a header name spells a form, whatever
// its case (names are canonicalised on the way).
func nameHasForm(name string, forms []form) bool {
	l := strings.ToLower(name)
	for _, f := range forms {
		if len(f.enc) > 0 && strings.Contains(l, strings.ToLower(string(f.enc))) {
			return true
		}
	}
	return false
}

// noTrailers drops the response's trailers once its body ends: the
// transport fills resp.Trailer from the wire as it reads the end of the
// body (chunked or HTTP/2), after ModifyResponse has run, and a trailer
// (gRPC's grpc-message among them) may quote the real value.
type noTrailers struct {
	io.ReadCloser
	resp *http.Response
}

func (r *noTrailers) Read(b []byte) (int, error) {
	n, err := r.ReadCloser.Read(b)
	if err != nil {
		r.resp.Trailer = nil
	}
	return n, err
}

// appliesTo reports whether a secret of s is sent to host.
func (s *snapshot) appliesTo(host string) bool {
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

// ScrubText replaces every spelling of every real value in s with what
// the guest knows instead (its placeholder, or the sentinel): for text
// built from an upstream's bytes that is not a response (an error that
// quotes a malformed header line), on its way to the guest or a log.
func (in *Injector) ScrubText(s string) string {
	out, _ := scrubString(s, in.snap().scrubForms())
	return out
}

// scrubForms are the spellings of every real value with what replaces
// them in responses.
func (s *snapshot) scrubForms() []form {
	var out []form
	for _, sb := range s.services {
		out = append(out, encodedForms(sb.value, Sentinel)...)
	}
	for _, c := range s.customs {
		out = append(out, encodedForms(c.value, c.placeholder)...)
	}
	return out
}

func (in *Injector) report(host string, n needle, where string, blocked bool) {
	what := "possible secret exfiltration; request sent unchanged"
	if blocked {
		what = "secret value on its way to where it must not go; request blocked"
	}
	in.log.Warn(what, "sandbox", in.sandbox, "host", host, "secret", n.secret, "kind", n.kind, "where", where)
	in.audit(AuditNote{
		Time: time.Now(), Sandbox: in.sandbox, Host: host, Secret: n.secret, Kind: n.kind, Where: where,
		BoundHosts: slices.Clone(n.hosts), Blocked: blocked,
	})
}

// scanHeadersURL looks for real values (forms, blocking) and foreign
// placeholders (reported) in headers and the URL.
func (in *Injector) scanHeadersURL(r *http.Request, host string, forms []form, placeholders []needle, block func(int, string) error) error {
	reported := make([]bool, len(placeholders))
	check := func(text, where string) error {
		if i := findForm(text, forms); i >= 0 {
			return block(i, where)
		}
		for i, n := range placeholders {
			if !reported[i] && strings.Contains(text, n.s) {
				reported[i] = true
				in.report(host, n, where, false)
			}
		}
		return nil
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			if err := check(v, "header "+k); err != nil {
				return err
			}
			if user, pass, ok := basicCredentials(v); ok {
				if err := check(user+":"+pass, "header "+k); err != nil {
					return err
				}
			}
		}
	}
	texts := []string{r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.URL.User.String()}
	if q, err := url.QueryUnescape(r.URL.RawQuery); err == nil {
		texts = append(texts, q)
	}
	for _, t := range texts {
		if err := check(t, "url"); err != nil {
			return err
		}
	}
	return nil
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

// body substitutes bound placeholders in r's body (up to MaxBodyBytes),
// which has already been wrapped in the scanners. A scanner's block error
// while reading comes back.
func (in *Injector) body(r *http.Request, host string, bound []customBinding) error {
	if r.Body == nil || r.Body == http.NoBody || len(bound) == 0 {
		return nil
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
		return nil
	}
	// Never wait for a slot: the waiting stream's unread data would hold
	// the guest connection's flow-control window the slot holders need.
	select {
	case in.bodies <- struct{}{}:
	default:
		in.log.Warn("too many request bodies being rewritten at once; request refused", "sandbox", in.sandbox, "host", host, "limit", MaxBufferedBodies)
		return fmt.Errorf("sbx proxy: more than %d requests with placeholders in their bodies at once; try again", MaxBufferedBodies)
	}
	var once sync.Once
	release := func() { once.Do(func() { <-in.bodies }) }
	orig := &releaseCloser{ReadCloser: r.Body, release: release}
	buf, err := io.ReadAll(io.LimitReader(orig, MaxBodyBytes+1))
	if err != nil {
		release()
		var be *BlockedError
		if errors.As(err, &be) {
			return err
		}
		// Hand on what was read and then the error: the transport fails the
		// request as it would have.
		r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), errReader{err}), orig}
		return nil
	}
	if len(buf) > MaxBodyBytes {
		tooLarge()
		r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), orig), orig}
		return nil // the slot is given back when the transport closes the body
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
	return nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// releaseCloser gives a buffering slot back when the body is closed.
type releaseCloser struct {
	io.ReadCloser
	release func()
}

func (c *releaseCloser) Close() error {
	c.release()
	return c.ReadCloser.Close()
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
