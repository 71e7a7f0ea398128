package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// sniffTimeout bounds the wait for the client's first byte on ports other
// than 80 and 443, where the server may be the one to speak first.
const sniffTimeout = 500 * time.Millisecond

// HandleConn serves one TCP connection the netstack steered to the proxy;
// dst is the address the guest dialed. It takes ownership of conn, blocks
// until the connection is over or ctx is cancelled, and closes conn.
//
// The first byte decides the protocol: 0x16 (or port 443) is TLS, decided on
// the ClientHello's SNI (on dst's IP without SNI); otherwise port 80 or a
// request line is plain HTTP, decided per request on its Host header; any
// other stream is plain TCP decided on dst. The upstream is always dialed
// from the name the proxy decided on, resolved again through the Resolver,
// never from dst: dst may be a synthetic address the guest's DNS answer
// carried. Only when no name is known is dst itself dialed.
func (p *Proxy) HandleConn(ctx context.Context, conn net.Conn, dst netip.AddrPort) {
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	defer conn.Close()

	port := dst.Port()
	if port != 80 && port != 443 {
		_ = conn.SetReadDeadline(time.Now().Add(sniffTimeout))
	} else {
		_ = conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
	}
	first := make([]byte, 1)
	_, err := io.ReadFull(conn, first)
	_ = conn.SetReadDeadline(time.Time{})
	switch {
	case err == nil && (first[0] == 0x16 || port == 443):
		p.handleTLS(ctx, conn, first, dst)
	case err == nil && (port == 80 || looksLikeHTTP(conn, &first)):
		nc := newNotifyConn(newPrefixConn(conn, first))
		p.serveConn(ctx, nc, nc, &connInfo{via: ViaTransparent, scheme: SchemeHTTP, defaultPort: port, ipHost: dst.Addr().Unmap().String()})
	case err == nil || errors.Is(err, os.ErrDeadlineExceeded):
		p.handleTCP(ctx, conn, first[:min(len(first), boolInt(err == nil))], dst)
	default:
		p.log.DebugContext(ctx, "transparent read", "dst", dst, "err", err)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// looksLikeHTTP reads up to 7 more bytes (within the sniff deadline) and
// reports whether they start an HTTP/1 request line. All bytes read are
// appended to *buf.
func looksLikeHTTP(conn net.Conn, buf *[]byte) bool {
	_ = conn.SetReadDeadline(time.Now().Add(sniffTimeout))
	defer conn.SetReadDeadline(time.Time{})
	for len(*buf) < 8 {
		b := make([]byte, 8-len(*buf))
		n, err := conn.Read(b)
		*buf = append(*buf, b[:n]...)
		if err != nil {
			break
		}
	}
	s := string(*buf)
	for _, m := range []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "TRACE "} {
		if strings.HasPrefix(s, m) || (len(s) >= 3 && len(s) < len(m) && strings.HasPrefix(m, s)) {
			return true
		}
	}
	return false
}

func (p *Proxy) handleTCP(ctx context.Context, conn net.Conn, prefix []byte, dst netip.AddrPort) {
	ip := dst.Addr().Unmap()
	t := Target{Host: ip.String(), Port: dst.Port(), IPs: []netip.Addr{ip}, Via: ViaTransparent, Scheme: SchemeTCP}
	d := p.decideTarget(ctx, t, nil)
	if !d.Allow {
		return
	}
	up, err := p.dialTarget(ctx, t)
	if err != nil {
		p.log.WarnContext(ctx, "transparent upstream", "dst", dst, "err", err)
		return
	}
	splice(ctx, conn, up, prefix)
}

func (p *Proxy) handleTLS(ctx context.Context, conn net.Conn, first []byte, dst netip.AddrPort) {
	_ = conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
	hello, consumed, err := readClientHello(conn, first)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		p.log.DebugContext(ctx, "read client hello", "dst", dst, "err", err)
		return
	}
	port := dst.Port()
	var t Target
	var d Decision
	if sni := strings.ToLower(strings.TrimSuffix(hello.ServerName, ".")); sni != "" {
		t, d = p.decide(ctx, sni, port, ViaTransparent, SchemeHTTPS, nil)
	} else {
		ip := dst.Addr().Unmap()
		t = Target{Host: ip.String(), Port: port, IPs: []netip.Addr{ip}, Via: ViaTransparent, Scheme: SchemeHTTPS}
		d = p.decideTarget(ctx, t, nil)
	}
	client := newPrefixConn(conn, consumed)
	if !d.Allow {
		if p.cfg.CA == nil {
			return // reset: no way to show a page without terminating
		}
		p.terminate(ctx, client, t, &d)
		return
	}
	if p.cfg.CA != nil && p.cfg.Intercept != nil && p.cfg.Intercept(t.Host, port) {
		p.terminate(ctx, client, t, nil)
		return
	}
	up, err := p.dialTarget(ctx, t)
	if err != nil {
		p.log.WarnContext(ctx, "transparent upstream", "host", t.Host, "port", port, "err", err)
		return
	}
	splice(ctx, conn, up, consumed)
}

var errHelloSeen = errors.New("client hello seen")

// readClientHello reads the TLS ClientHello from conn (first holds bytes
// already read) and returns it with every byte consumed, to be replayed to
// whoever completes the handshake. It uses crypto/tls's own parser on a
// recording connection and aborts the handshake once the hello is parsed.
func readClientHello(conn net.Conn, first []byte) (*tls.ClientHelloInfo, []byte, error) {
	var rec bytes.Buffer
	rec.Write(first)
	rc := &recordConn{Conn: conn, r: io.MultiReader(bytes.NewReader(first), io.TeeReader(conn, &rec))}
	var hello *tls.ClientHelloInfo
	err := tls.Server(rc, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = h
			return nil, errHelloSeen
		},
	}).Handshake()
	if hello == nil {
		return nil, nil, errors.Join(errors.New("no tls client hello"), err)
	}
	h := *hello
	h.Conn = nil
	return &h, rec.Bytes(), nil
}

// recordConn reads through r and swallows writes (the aborted handshake's
// alert must not reach the client).
type recordConn struct {
	net.Conn
	r io.Reader
}

func (c *recordConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *recordConn) Write(b []byte) (int, error) { return len(b), nil }
func (c *recordConn) Close() error                { return nil }
