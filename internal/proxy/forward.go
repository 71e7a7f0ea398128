package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Serve runs the forward (explicit) proxy on l: absolute-form HTTP requests
// and CONNECT tunnels, one decision per request or tunnel. It blocks until
// ctx is cancelled (then it returns nil) or l fails (then it returns the
// error). It closes l, and returns only after every connection it accepted
// is closed.
func (p *Proxy) Serve(ctx context.Context, l net.Listener) error {
	var handlers sync.WaitGroup
	base := context.WithValue(ctx, connInfoKey{}, &connInfo{via: ViaForward, scheme: SchemeHTTP, defaultPort: 80})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			handlers.Add(1)
			defer handlers.Done()
			p.serveForward(w, r)
		}),
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	err := srv.Serve(l)
	stop()
	_ = srv.Close()
	handlers.Wait()
	if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serve forward proxy: %w", err)
}

func (p *Proxy) serveForward(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodConnect:
		p.serveConnect(w, r)
	case r.URL.IsAbs() && r.URL.Scheme == "http":
		p.serveClear(w, r)
	case r.URL.IsAbs():
		http.Error(w, fmt.Sprintf("sbx proxy: scheme %q is not proxied; use CONNECT for https", r.URL.Scheme), http.StatusBadRequest)
	default:
		http.Error(w, "sbx proxy: this is a proxy; send absolute-form or CONNECT requests", http.StatusBadRequest)
	}
}

func (p *Proxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	host, port, err := splitHostPort(r.Host, 0)
	if err != nil || host == "" {
		http.Error(w, "sbx proxy: CONNECT needs host:port", http.StatusBadRequest)
		return
	}
	scheme := SchemeTCP
	if port == 443 {
		scheme = SchemeHTTPS
	}
	t, d := p.decide(ctx, host, port, ViaForward, scheme, r)
	if !d.Allow {
		writeBlocked(w, t, d)
		return
	}
	intercept := p.cfg.CA != nil && p.cfg.Intercept != nil && p.cfg.Intercept(host, port)
	var upstream net.Conn
	if !intercept {
		if upstream, err = p.dialTarget(ctx, t); err != nil {
			p.log.WarnContext(ctx, "connect upstream", "host", host, "port", port, "err", err)
			http.Error(w, fmt.Sprintf("sbx proxy: could not reach %s: %v", r.Host, err), http.StatusBadGateway)
			return
		}
	}
	rc := http.NewResponseController(w)
	conn, brw, err := rc.Hijack()
	if err != nil {
		if upstream != nil {
			_ = upstream.Close()
		}
		p.log.ErrorContext(ctx, "hijack connect", "err", err)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		_ = conn.Close()
		if upstream != nil {
			_ = upstream.Close()
		}
		return
	}
	// Bytes the client sent after the CONNECT head, already buffered.
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ = brw.Reader.Peek(n)
		early = append([]byte(nil), early...)
	}
	if intercept {
		p.terminate(ctx, newPrefixConn(conn, early), t, nil)
		return
	}
	// A tunnel carries what the client sends: a TLS session for another
	// name (served from the same CDN address) is judged by that name, as
	// on the transparent path, before a byte of it goes out.
	gate := &helloGate{Conn: conn, early: early, check: func(sni string) bool {
		if sni == "" || sni == host {
			return true
		}
		_, d := p.decide(ctx, sni, port, ViaForward, SchemeHTTPS, nil)
		if !d.Allow {
			p.log.InfoContext(ctx, "tunnel server name denied", "connect", host, "sni", LogField(sni))
		}
		return d.Allow
	}}
	splice(ctx, gate, upstream, nil)
}

// helloGate is a tunnelled client connection whose first bytes, when they
// open a TLS handshake, are held until the ClientHello is read and its
// server name passes check; otherwise the tunnel is closed. Bytes that do
// not start a handshake pass unchanged (a protocol where the server speaks
// first never waits: the gate reads only when the tunnel reads).
type helloGate struct {
	net.Conn
	early   []byte
	check   func(sni string) bool
	checked bool
	pending []byte
}

func (g *helloGate) Read(b []byte) (int, error) {
	if !g.checked {
		g.checked = true
		first := g.early
		if len(first) == 0 {
			buf := make([]byte, 1)
			n, err := g.Conn.Read(buf)
			if n == 0 {
				return 0, err
			}
			first = buf[:n]
		}
		g.pending = first
		if first[0] == 0x16 { // TLS handshake record
			_ = g.Conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
			hello, consumed, err := readClientHello(g.Conn, first)
			_ = g.Conn.SetReadDeadline(time.Time{})
			if err != nil || !g.check(strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))) {
				_ = g.Conn.Close()
				return 0, io.ErrUnexpectedEOF
			}
			g.pending = consumed
		}
	}
	if len(g.pending) > 0 {
		n := copy(b, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(b)
}

// CloseWrite half-closes the client connection, as splice expects.
func (g *helloGate) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return g.Conn.Close()
}
