package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

const (
	// AnswerTTL is the TTL of every A and AAAA record the DNS server sends:
	// short, so a policy change reaches the guest's caches quickly.
	AnswerTTL = 10 * time.Second
	// resolveTimeout bounds one DNSHandler.Resolve call.
	resolveTimeout = 5 * time.Second
)

// DNSHandler answers the guest's address queries.
type DNSHandler interface {
	// Resolve returns the addresses for name (lower case, without the
	// trailing dot) and qtype (dns.TypeA or dns.TypeAAAA), and the response
	// code: dns.RcodeSuccess with the addresses to answer (addresses of the
	// other family are ignored; none means an empty NOERROR answer), or a
	// failure code such as dns.RcodeRefused or dns.RcodeNameError, whose
	// addresses are ignored. It is called concurrently; ctx carries a
	// deadline of a few seconds and is cancelled when the Stack closes.
	Resolve(ctx context.Context, name string, qtype uint16) (ips []netip.Addr, rcode int)
}

// DNSFlowCounter is a FlowHandler that also counts the guest's TCP
// connections to the DNS server, which never reach its TCP method: each
// takes a flow for as long as it is open, or is closed at once when
// DNSFlow refuses.
type DNSFlowCounter interface {
	DNSFlow() (release func(), ok bool)
}

// countedListener accepts only the connections its counter lets in.
type countedListener struct {
	net.Listener
	count DNSFlowCounter
}

func (l *countedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		release, ok := l.count.DNSFlow()
		if !ok {
			c.Close()
			continue
		}
		return &countedConn{Conn: c, release: release}, nil
	}
}

type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// dnsServer is the DNS server on the gateway, over UDP and TCP.
type dnsServer struct {
	udp, tcp *dns.Server
}

func startDNS(s *Stack) (*dnsServer, error) {
	addr := tcpip.FullAddress{NIC: nicID, Addr: s.gwAddr, Port: DNSPort}
	pc, err := gonet.DialUDP(s.stack, &addr, nil, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("bind DNS server to %s:%d/udp: %w", s.cfg.Gateway, DNSPort, err)
	}
	ln, err := gonet.ListenTCP(s.stack, addr, ipv4.ProtocolNumber)
	if err != nil {
		_ = pc.Close()
		return nil, fmt.Errorf("bind DNS server to %s:%d/tcp: %w", s.cfg.Gateway, DNSPort, err)
	}
	h := &dnsMux{s: s}
	var tcpLn net.Listener = ln
	if c, ok := s.cfg.Flows.(DNSFlowCounter); ok {
		tcpLn = &countedListener{Listener: ln, count: c}
	}
	d := &dnsServer{
		udp: &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(h.serveUDP)},
		tcp: &dns.Server{Listener: tcpLn, Handler: dns.HandlerFunc(h.serveTCP)},
	}
	// Wait for both servers to start: ShutdownContext fails on a server
	// that has not started, and Close must be able to stop them.
	for _, srv := range []*dns.Server{d.udp, d.tcp} {
		started, done := make(chan struct{}), make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		s.wg.Go(func() {
			err := srv.ActivateAndServe()
			if err != nil && !s.isClosed() {
				s.log.Error("DNS server stopped", "err", err)
			}
			done <- err
		})
		select {
		case <-started:
		case err := <-done:
			_ = pc.Close()
			_ = ln.Close()
			return nil, fmt.Errorf("start DNS server: %w", err)
		}
	}
	return d, nil
}

func (d *dnsServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return errors.Join(d.udp.ShutdownContext(ctx), d.tcp.ShutdownContext(ctx))
}

type dnsMux struct {
	s *Stack
}

func (h *dnsMux) serveUDP(w dns.ResponseWriter, r *dns.Msg) {
	size := dns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
		size = int(opt.UDPSize())
	}
	h.serve(w, r, size)
}

func (h *dnsMux) serveTCP(w dns.ResponseWriter, r *dns.Msg) {
	h.serve(w, r, dns.MaxMsgSize)
}

func (h *dnsMux) serve(w dns.ResponseWriter, r *dns.Msg, size int) {
	m := h.answer(r)
	m.Truncate(size)
	if err := w.WriteMsg(m); err != nil {
		h.s.log.Debug("write DNS answer", "err", err)
	}
}

// answer builds the reply to r.
func (h *dnsMux) answer(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	if r.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeNotImplemented
		return m
	}
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := r.Question[0]
	if q.Qclass != dns.ClassINET || (q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA) {
		// Other types (HTTPS, MX, TXT, ...) get an empty NOERROR answer:
		// clients then fall back to A/AAAA, which the policy sees.
		return m
	}
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	ctx, cancel := context.WithTimeout(h.s.ctx, resolveTimeout)
	defer cancel()
	ips, rcode := h.s.cfg.DNS.Resolve(ctx, name, q.Qtype)
	if rcode != dns.RcodeSuccess {
		m.Rcode = rcode
		return m
	}
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: uint32(AnswerTTL / time.Second)}
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case q.Qtype == dns.TypeA && ip.Is4():
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IP(ip.AsSlice())})
		case q.Qtype == dns.TypeAAAA && ip.Is6():
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.IP(ip.AsSlice())})
		}
	}
	return m
}
