package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sbx-dev/sbx/internal/resolve"
)

// Via values for Target.Via and Event.Via.
const (
	ViaForward     = "forward"
	ViaTransparent = "transparent"
)

// Scheme values for Target.Scheme and Event.Scheme.
const (
	SchemeHTTP  = "http"
	SchemeHTTPS = "https"
	SchemeTCP   = "tcp"
)

// Target is the destination a decision is asked for.
type Target struct {
	// Host is the name or IP literal as requested (CONNECT authority, Host
	// header, TLS SNI, or the dialed IP when nothing better is known),
	// lower-cased, without brackets or a trailing dot.
	Host string
	Port uint16
	// IPs are the addresses Host resolved to through Config.Resolver (the
	// literal itself for an IP). It may be empty when resolution failed; the
	// proxy then cannot connect even if the decision allows it. When allowed,
	// the proxy dials exactly these addresses and never resolves Host again
	// for this connection or request.
	IPs []netip.Addr
	// Via is ViaForward or ViaTransparent.
	Via string
	// Scheme is SchemeHTTP, SchemeHTTPS or SchemeTCP. A CONNECT to port 443
	// is "https", to any other port "tcp".
	Scheme string
}

// Decision is the policy's answer for a Target.
type Decision struct {
	Allow bool
	// Rule names the rule that matched, or the default that applied.
	Rule string
	// Reason is a short human explanation.
	Reason string
	// Hint is the command that would change the outcome, for example
	// "sbx policy allow network example.com". Shown on the 403 page.
	Hint string
}

// Event is one audited decision. It never carries headers, query strings or
// bodies.
type Event struct {
	Time    time.Time
	Host    string
	IP      netip.Addr // first resolved address; zero if none
	Port    uint16
	Via     string
	Scheme  string
	Allowed bool
	Rule    string
	Reason  string
	Method  string // empty for tunnels decided without seeing a request
	Path    string // URL path only, never the query
}

// Config configures a Proxy. Only Decide is semantically required.
type Config struct {
	// Decide returns the policy decision for a target. It must be fast and
	// safe for concurrent use. Nil denies everything.
	Decide func(ctx context.Context, t Target) Decision
	// Resolver resolves upstream names. Nil means resolve.System().
	Resolver resolve.Resolver
	// Dial connects to an upstream address ("ip:port", always an IP). Nil
	// means a net.Dialer with a 10s timeout.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// CA signs the leaf certificates shown when TLS is terminated. Nil
	// disables termination: Intercept is ignored and blocked transparent
	// TLS connections are reset instead of shown a 403 page.
	CA *CA
	// Intercept reports whether TLS to host:port is terminated (so the
	// proxy sees and may modify requests). Nil never intercepts.
	Intercept func(host string, port uint16) bool
	// ModifyRequest is called on every request the proxy sees in clear
	// (plain HTTP, or terminated HTTPS), after hop-by-hop headers were
	// removed and just before it goes upstream. It must not retain the
	// request. An error refuses the request: one with a BlockedReason()
	// string method (a secret on its way where it must not go) is answered
	// 403 with that reason and audited with rule "secret-scan"; the same
	// error from reading the request body (a streaming scan) counts too.
	// Nil does nothing.
	ModifyRequest func(*http.Request) error
	// ModifyResponse is called on every response to such a request before
	// it goes to the guest (see httputil.ReverseProxy.ModifyResponse); an
	// error is answered as for ModifyRequest. Nil does nothing.
	ModifyResponse func(*http.Response) error
	// ScrubText makes the text of an upstream failure safe to show the
	// guest and to log: Go's HTTP errors quote the upstream's bytes (a
	// malformed header line that echoes an injected credential), so the
	// real values of secrets are replaced in it. Nil leaves it as is.
	ScrubText func(string) string
	// Audit receives every decision, synchronously; it must not block for
	// long. Nil drops events.
	Audit func(Event)
	// UpstreamRoots verifies upstream TLS. Nil means the system roots (the
	// caller honours SSL_CERT_FILE by building this pool).
	UpstreamRoots *x509.CertPool
	// Log receives debug and error records (never headers or queries). Nil
	// discards.
	Log *slog.Logger
}

// Proxy is a policy-enforcing forward and transparent HTTP(S) proxy. Create
// it with New, use Serve and HandleConn concurrently, and Close it when done.
type Proxy struct {
	cfg Config
	log *slog.Logger
	// h1 and h2 carry requests upstream; the upstream protocol mirrors the
	// client's: HTTP/2 (when the upstream offers it) only for requests that
	// arrived over HTTP/2.
	h1, h2 *http.Transport
	rp     *httputil.ReverseProxy
}

// New returns a Proxy for cfg. It starts no goroutines.
func New(cfg Config) (*Proxy, error) {
	if cfg.Resolver == nil {
		cfg.Resolver = resolve.System()
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second}
		cfg.Dial = d.DialContext
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Intercept != nil && cfg.CA == nil {
		return nil, errors.New("new proxy: intercept set without a ca")
	}
	p := &Proxy{cfg: cfg, log: cfg.Log.With("component", "proxy")}
	newTransport := func(h2 bool) *http.Transport {
		tr := &http.Transport{
			Proxy:               nil, // never chain to the host's proxy settings
			DialContext:         p.dialVetted,
			TLSClientConfig:     &tls.Config{RootCAs: cfg.UpstreamRoots, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2:   h2,
			DisableCompression:  true,
			MaxIdleConns:        512,
			MaxIdleConnsPerHost: 64,
			// One guest HTTP/2 connection may carry hundreds of streams; to
			// an HTTP/1.1 upstream each would be a socket of its own.
			MaxConnsPerHost:       16,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		return tr
	}
	p.h1 = newTransport(false)
	p.h2 = newTransport(true)
	p.rp = &httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: roundTripperFunc(p.roundTrip),
		// Streaming responses (unknown length, text/event-stream) are flushed
		// after every write whatever this says; known-length bodies at least
		// this often, saving a write per small response.
		FlushInterval: 20 * time.Millisecond,
		// Its errors quote upstream bytes too (a malformed trailer that
		// echoes a credential): scrubbed like upstreamError's.
		ErrorLog:       log.New(scrubbedLog{p}, "", 0),
		ErrorHandler:   p.upstreamError,
		ModifyResponse: cfg.ModifyResponse,
	}
	return p, nil
}

// scrubbedLog is the reverse proxy's error log: each line at debug level,
// its text scrubbed of the real values of secrets (Config.ScrubText).
type scrubbedLog struct{ p *Proxy }

func (l scrubbedLog) Write(b []byte) (int, error) {
	msg := strings.TrimSuffix(string(b), "\n")
	if l.p.cfg.ScrubText != nil {
		msg = l.p.cfg.ScrubText(msg)
	}
	l.p.log.Debug(LogField(msg))
	return len(b), nil
}

// maxLogField caps a logged string that a guest or an upstream chose.
const maxLogField = 512

// LogField is s cut to maxLogField bytes for a log line: a guest can
// make such strings long (a 16 KB TLS server name per connection), and
// the log must not grow by them.
func LogField(s string) string {
	if len(s) <= maxLogField {
		return s
	}
	return s[:maxLogField] + fmt.Sprintf("...(%d bytes)", len(s))
}

// Close releases idle upstream connections. It does not stop Serve or
// HandleConn (cancel their contexts for that). It is idempotent.
func (p *Proxy) Close() error {
	p.h1.CloseIdleConnections()
	p.h2.CloseIdleConnections()
	return nil
}

// ValidHost reports whether host is an IP address without an IPv6 zone
// (a zone is never a destination: connect(2) to "::%x" reaches the
// host's loopback, and no prefix contains a zoned address) or a DNS name
// of letters, digits, '-' and '_' labels, at most 253 bytes.
func ValidHost(host string) bool {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Zone() == ""
	}
	if host == "" || len(host) > 253 {
		return false
	}
	for label := range strings.SplitSeq(host, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// resolveTimeout bounds one upstream name lookup.
const resolveTimeout = 10 * time.Second

// decide resolves host (unless it is an IP literal), asks the policy and
// audits the answer.
func (p *Proxy) decide(ctx context.Context, host string, port uint16, via, scheme string, req *http.Request) (Target, Decision) {
	t := Target{Host: host, Port: port, Via: via, Scheme: scheme}
	if !ValidHost(host) {
		// A guest's bytes (a TLS server name, a Host header) that name
		// no host: never looked up nor dialled, and recorded escaped, so
		// they reach no terminal that shows the log.
		t.Host = strconv.QuoteToASCII(host)
		d := Decision{Reason: "not a host name or IP address"}
		p.audit(t, d, req)
		return t, d
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		t.IPs = []netip.Addr{ip.Unmap()}
	} else {
		// The name alone first: a name no rule could allow is denied
		// without a lookup, so a query never carries data towards a
		// nameserver the policy would not let the sandbox reach.
		if pre := p.decideName(ctx, t); !pre.Allow {
			p.audit(t, pre, req)
			return t, pre
		}
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		ips, err := p.cfg.Resolver.LookupNetIP(rctx, "ip", host)
		cancel()
		if err != nil {
			p.log.DebugContext(ctx, "resolve upstream", "host", host, "err", err)
		}
		for _, a := range ips {
			t.IPs = append(t.IPs, a.Unmap())
		}
	}
	return t, p.decideTarget(ctx, t, req)
}

// decideName asks the policy about t's name before any address is known.
func (p *Proxy) decideName(ctx context.Context, t Target) Decision {
	if p.cfg.Decide == nil {
		return Decision{Rule: "default", Reason: "no policy configured"}
	}
	return p.cfg.Decide(ctx, t)
}

// decideTarget asks the policy about an already resolved target and audits.
func (p *Proxy) decideTarget(ctx context.Context, t Target, req *http.Request) Decision {
	var d Decision
	if p.cfg.Decide == nil {
		d = Decision{Rule: "default", Reason: "no policy configured"}
	} else {
		d = p.cfg.Decide(ctx, t)
	}
	p.audit(t, d, req)
	return d
}

func (p *Proxy) audit(t Target, d Decision, req *http.Request) {
	if p.cfg.Audit == nil {
		return
	}
	ev := Event{
		Time: time.Now(), Host: t.Host, Port: t.Port, Via: t.Via, Scheme: t.Scheme,
		Allowed: d.Allow, Rule: d.Rule, Reason: d.Reason,
	}
	if len(t.IPs) > 0 {
		ev.IP = t.IPs[0]
	}
	if req != nil {
		ev.Method = req.Method
		if req.URL != nil {
			ev.Path = req.URL.Path
		}
	}
	p.cfg.Audit(ev)
}

// dialTarget connects to the first reachable vetted address of t.
func (p *Proxy) dialTarget(ctx context.Context, t Target) (net.Conn, error) {
	if len(t.IPs) == 0 {
		return nil, fmt.Errorf("dial %s: no address resolved", net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))))
	}
	var errs []error
	for _, ip := range t.IPs {
		c, err := p.cfg.Dial(ctx, "tcp", netip.AddrPortFrom(ip, t.Port).String())
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("dial %s: %w", net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))), errors.Join(errs...))
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// roundTrip sends an outbound request over the transport matching the
// protocol the client used (see Proxy.h1).
func (p *Proxy) roundTrip(r *http.Request) (*http.Response, error) {
	if p.cfg.ModifyRequest != nil {
		if err := p.cfg.ModifyRequest(r); err != nil {
			if r.Body != nil {
				r.Body.Close()
			}
			return nil, err
		}
	}
	tr := p.h1
	if h2, _ := r.Context().Value(clientH2Key{}).(bool); h2 {
		tr = p.h2
	}
	resp, err := tr.RoundTrip(r)
	if err != nil {
		// A scan of the streaming body may have refused it: report that
		// reason, whatever the transport made of the read error.
		if b, ok := r.Body.(interface{ Blocked() error }); ok && b.Blocked() != nil {
			return nil, b.Blocked()
		}
	}
	return resp, err
}

// blockedReason is the explanation of an error that refused a request
// for carrying a secret, or "".
func blockedReason(err error) string {
	var b interface{ BlockedReason() string }
	if errors.As(err, &b) {
		return b.BlockedReason()
	}
	return ""
}

type clientH2Key struct{}

type vettedKey struct{}

// dialVetted is the upstream transport's dialer. It only dials the addresses
// vetted for the request (carried in ctx), and only for the host:port they
// were vetted for; anything else fails closed.
func (p *Proxy) dialVetted(ctx context.Context, network, addr string) (net.Conn, error) {
	t, ok := ctx.Value(vettedKey{}).(*Target)
	if !ok {
		return nil, fmt.Errorf("dial %s: no vetted destination", addr)
	}
	if want := net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))); addr != want {
		return nil, fmt.Errorf("dial %s: vetted destination is %s", addr, want)
	}
	return p.dialTarget(ctx, *t)
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if reason := blockedReason(err); reason != "" {
		t, _ := r.Context().Value(vettedKey{}).(*Target)
		if t == nil {
			t = &Target{Host: r.Host}
		}
		d := Decision{Rule: "secret-scan", Reason: reason}
		p.audit(*t, d, r)
		p.log.WarnContext(r.Context(), "request refused", "host", t.Host, "reason", reason)
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Sbx-Blocked", "secret")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, "sbx: %s\nThe real values of secrets go only to the hosts they are bound to, over HTTPS; see `sbx secret ls`.\n", reason)
		return
	}
	scrub := p.cfg.ScrubText
	if scrub == nil {
		scrub = func(s string) string { return s }
	}
	if errors.Is(err, context.Canceled) {
		p.log.DebugContext(r.Context(), "upstream request canceled", "host", r.Host)
	} else {
		p.log.WarnContext(r.Context(), "upstream request", "host", r.Host, "err", scrub(err.Error()))
	}
	host := r.Host
	if t, ok := r.Context().Value(vettedKey{}).(*Target); ok {
		host = net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port)))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusBadGateway)
	fmt.Fprintf(w, "sbx proxy: could not reach %s: %s\n", host, scrub(shortError(err)))
}

// shortError drops *url.Error wrapping, which carries the URL (and so the
// query).
func shortError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}
