package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"
)

// connInfo describes the connection a clear-text request arrived on.
type connInfo struct {
	via    string
	scheme string // scheme of the upstream: http, or https for terminated TLS
	// target is fixed for terminated TLS (the CONNECT host or SNI that was
	// decided on); nil for plain HTTP, where every request is decided on its
	// own host.
	target *Target
	// defaultPort applies when the Host header carries no port.
	defaultPort uint16
	// blocked, when set, answers every request with this decision's 403 page
	// (a blocked transparent TLS connection terminated only to explain).
	blocked *Decision
	// ipHost is the host for a request without a Host header (transparent
	// plain HTTP: the address the guest dialed).
	ipHost string
}

type connInfoKey struct{}

func connInfoFrom(ctx context.Context) *connInfo {
	ci, _ := ctx.Value(connInfoKey{}).(*connInfo)
	return ci
}

// serveClear is the handler for requests the proxy sees in clear: plain
// HTTP (forward absolute-form or transparent) and terminated HTTPS.
func (p *Proxy) serveClear(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ci := connInfoFrom(ctx)
	if ci == nil {
		http.Error(w, "sbx proxy: internal error: no connection info", http.StatusInternalServerError)
		return
	}
	if ci.blocked != nil {
		writeBlocked(w, *ci.target, *ci.blocked)
		return
	}
	hostport := r.Host
	if r.URL.IsAbs() {
		hostport = r.URL.Host
	}
	host, port, err := splitHostPort(hostport, ci.defaultPort)
	if err != nil {
		http.Error(w, "sbx proxy: bad host: "+err.Error(), http.StatusBadRequest)
		return
	}
	var t Target
	var d Decision
	if ci.target != nil {
		t = *ci.target
		if host != t.Host || port != t.Port {
			d = Decision{Rule: "host-mismatch", Reason: fmt.Sprintf("request host %s does not match TLS server name %s", hostport, t.Host)}
			p.audit(t, d, r)
			writeMisdirected(w, hostport, t)
			return
		}
		// Re-ask the policy for every request so a rule change reaches kept-alive
		// connections; the addresses vetted for the connection are reused.
		d = p.decideTarget(ctx, t, r)
	} else {
		if host == "" {
			host = ci.ipHost
		}
		if host == "" {
			http.Error(w, "sbx proxy: request has no host", http.StatusBadRequest)
			return
		}
		t, d = p.decide(ctx, host, port, ci.via, ci.scheme, r)
	}
	if !d.Allow {
		writeBlocked(w, t, d)
		return
	}
	t.Scheme = ci.scheme
	ctx = context.WithValue(ctx, vettedKey{}, &t)
	if r.ProtoMajor == 2 {
		ctx = context.WithValue(ctx, clientH2Key{}, true)
	}
	p.rp.ServeHTTP(no1xx{w}, r.WithContext(ctx))
}

// no1xx drops the informational responses (103 Early Hints and the like)
// the reverse proxy relays from upstream: they bypass ModifyResponse, so
// their headers could carry a real secret value back unscrubbed. They are
// optional to every client; 101 (an upgrade) still passes.
type no1xx struct{ http.ResponseWriter }

func (w no1xx) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w no1xx) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// rewrite points the outbound request at the vetted target.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	t, _ := pr.In.Context().Value(vettedKey{}).(*Target)
	if t == nil {
		// Unreachable: serveClear always sets it. dialVetted fails closed anyway.
		return
	}
	pr.Out.URL.Scheme = t.Scheme
	pr.Out.URL.Host = net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port)))
	pr.Out.Host = pr.In.Host
	if pr.In.URL.IsAbs() {
		pr.Out.Host = pr.In.URL.Host
	}
	pr.Out.Header.Del("Proxy-Connection")
	// ModifyRequest runs in roundTrip, where it can refuse the request.
}

// splitHostPort parses "host", "host:port", "[v6]" or "[v6]:port" and
// canonicalises the host (lower case, no brackets, no trailing dot).
func splitHostPort(hostport string, defaultPort uint16) (string, uint16, error) {
	host, portStr := hostport, ""
	if h, ps, err := net.SplitHostPort(hostport); err == nil {
		host, portStr = h, ps
	} else if strings.HasPrefix(hostport, "[") && strings.HasSuffix(hostport, "]") {
		host = hostport[1 : len(hostport)-1]
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if !ValidHost(host) {
		return "", 0, fmt.Errorf("invalid host %q", host)
	}
	port := defaultPort
	if portStr != "" {
		n, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || n == 0 {
			return "", 0, fmt.Errorf("invalid port %q", portStr)
		}
		port = uint16(n)
	}
	if port == 0 {
		return "", 0, fmt.Errorf("no port in %q", hostport)
	}
	return host, port, nil
}

// writeBlocked writes the 403 page for a denied target.
func writeBlocked(w http.ResponseWriter, t Target, d Decision) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Sbx-Blocked", "policy")
	w.WriteHeader(http.StatusForbidden)
	_, _ = w.Write([]byte(BlockedPage(t, d)))
}

// BlockedPage is the text of the 403 response for a denied target: the
// host, the rule or default that blocked it, the reason, and the command
// that would allow it.
func BlockedPage(t Target, d Decision) string {
	var b strings.Builder
	fmt.Fprintf(&b, "sbx: blocked %s to %s by the sandbox network policy\n",
		t.Scheme, net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))))
	rule := d.Rule
	if rule == "" {
		rule = "default policy"
	}
	fmt.Fprintf(&b, "rule: %s\n", rule)
	if d.Reason != "" {
		fmt.Fprintf(&b, "reason: %s\n", d.Reason)
	}
	if d.Hint != "" {
		fmt.Fprintf(&b, "to allow it, run on the host: %s\n", d.Hint)
	}
	return b.String()
}

func writeMisdirected(w http.ResponseWriter, hostport string, t Target) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Sbx-Blocked", "host-mismatch")
	w.WriteHeader(http.StatusMisdirectedRequest)
	fmt.Fprintf(w, "sbx: refused request for %s on a TLS connection to %s: the Host header must match the TLS server name\n",
		hostport, net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))))
}

// serveConn serves HTTP on one client connection until it ends or ctx is
// cancelled. served is what the HTTP server reads (nc itself, or a *tls.Conn
// over nc whose handshake is done, in which case ALPN "h2" gets HTTP/2); nc
// tells when the connection is closed. serveConn closes the connection and
// returns only once every handler it started has returned.
func (p *Proxy) serveConn(ctx context.Context, nc *notifyConn, served net.Conn, ci *connInfo) {
	l := &oneConnListener{first: make(chan net.Conn, 1), conn: nc}
	l.first <- served
	var handlers sync.WaitGroup
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			handlers.Add(1)
			defer handlers.Done()
			p.serveClear(w, r)
		}),
		BaseContext:       func(net.Listener) context.Context { return context.WithValue(ctx, connInfoKey{}, ci) },
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	_ = srv.Serve(l)
	stop()
	_ = srv.Close()
	_ = served.Close()
	handlers.Wait()
}

// notifyConn closes done when the connection is closed.
type notifyConn struct {
	net.Conn
	once sync.Once
	done chan struct{}
}

func newNotifyConn(c net.Conn) *notifyConn { return &notifyConn{Conn: c, done: make(chan struct{})} }

func (c *notifyConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}

// oneConnListener hands out a single connection, then blocks in Accept until
// that connection is closed (or the listener is), so http.Server.Serve
// returns exactly when the connection is over.
type oneConnListener struct {
	conn  *notifyConn
	first chan net.Conn
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.first:
		return c, nil
	default:
	}
	<-l.conn.done
	return nil, net.ErrClosed
}

// Close closes the connection: the listener exists only for it.
func (l *oneConnListener) Close() error { return l.conn.Close() }

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
