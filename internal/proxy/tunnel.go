package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

const handshakeTimeout = 30 * time.Second

// splice copies bytes both ways between client and upstream until both
// directions are done (half-closing where the connection supports it) or ctx
// is cancelled, then closes both. prefix is written to upstream first (bytes
// already read from the client).
func splice(ctx context.Context, client, upstream net.Conn, prefix []byte) {
	stop := context.AfterFunc(ctx, func() {
		_ = client.Close()
		_ = upstream.Close()
	})
	defer stop()
	defer client.Close()
	defer upstream.Close()
	if len(prefix) > 0 {
		if _, err := upstream.Write(prefix); err != nil {
			return
		}
	}
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if !closeWrite(dst) {
			// Without half-close the peer would never see EOF: end both.
			_ = dst.Close()
			_ = src.Close()
		}
		done <- struct{}{}
	}
	go cp(upstream, client)
	go cp(client, upstream)
	<-done
	<-done
}

func closeWrite(c net.Conn) bool {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite() == nil
	}
	return false
}

// prefixConn replays prefix before reading from Conn.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func newPrefixConn(c net.Conn, prefix []byte) net.Conn {
	if len(prefix) == 0 {
		return c
	}
	return &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(prefix), c)}
}

func (c *prefixConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// terminate completes a TLS handshake with the client using a leaf for
// t.Host and serves the decrypted HTTP/1.1 or HTTP/2 requests. With blocked
// set, every request gets that decision's 403 page instead. It closes conn.
func (p *Proxy) terminate(ctx context.Context, conn net.Conn, t Target, blocked *Decision) {
	leaf, err := p.cfg.CA.Leaf(t.Host)
	if err != nil {
		p.log.ErrorContext(ctx, "mint leaf", "host", t.Host, "err", err)
		_ = conn.Close()
		return
	}
	nc := newNotifyConn(conn)
	tc := tls.Server(nc, &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		p.log.DebugContext(ctx, "client tls handshake", "host", t.Host, "err", err)
		_ = tc.Close()
		return
	}
	t.Scheme = SchemeHTTPS // known now, whatever the CONNECT port suggested
	p.serveConn(ctx, nc, tc, &connInfo{via: t.Via, scheme: SchemeHTTPS, target: &t, defaultPort: t.Port, blocked: blocked})
}
