package netstack

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"
	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConfigValidation(t *testing.T) {
	_, err := New(t.Context(), Config{
		Subnet:  netip.MustParsePrefix("10.0.0.0/24"),
		Gateway: netip.MustParseAddr("10.0.1.1"),
		MTU:     100,
	})
	if err == nil {
		t.Fatal("New accepted a bad config")
	}
	for _, want := range []string{"gateway 10.0.1.1", "guest IP 192.168.127.2", "guest MAC", "MTU 100", "flows", "DNS"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDHCPLease(t *testing.T) {
	n := newTestNet(t, Config{}, nil)
	discover, err := dhcpv4.NewDiscovery(testGuestMAC)
	if err != nil {
		t.Fatal(err)
	}
	frame := ipv4Frame(testGuestMAC, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}),
		header.UDPProtocolNumber, udpPayload(68, 67, discover.ToBytes()))
	if err := n.g.sendFrame(frame); err != nil {
		t.Fatal(err)
	}
	ip := n.g.nextIPv4(5*time.Second, func(ip header.IPv4) bool {
		if ip.TransportProtocol() != header.UDPProtocolNumber {
			return false
		}
		return header.UDP(ip.Payload()).SourcePort() == 67
	})
	if ip == nil {
		t.Fatal("no DHCP reply")
	}
	offer, err := dhcpv4.FromBytes(header.UDP(ip.Payload()).Payload())
	if err != nil {
		t.Fatalf("parse DHCP reply: %v", err)
	}
	if got := offer.MessageType(); got != dhcpv4.MessageTypeOffer {
		t.Errorf("message type = %v, want offer", got)
	}
	if got, want := offer.YourIPAddr.String(), DefaultGuestIP.String(); got != want {
		t.Errorf("offered %s, want %s", got, want)
	}
	if got := offer.Router(); len(got) != 1 || got[0].String() != DefaultGateway.String() {
		t.Errorf("router = %v, want %s", got, DefaultGateway)
	}
	if got := offer.DNS(); len(got) != 1 || got[0].String() != DefaultGateway.String() {
		t.Errorf("DNS = %v, want %s", got, DefaultGateway)
	}
}

func TestTCPAcceptAnyAddress(t *testing.T) {
	dst := netip.MustParseAddrPort("1.2.3.4:443")
	flows := make(chan FlowInfo, 1)
	n := newTestNet(t, Config{}, func(_ context.Context, f FlowInfo) TCPAction {
		flows <- f
		return Accept(func(c net.Conn) {
			if got := c.LocalAddr().String(); got != dst.String() {
				t.Errorf("handler conn LocalAddr = %s, want %s", got, dst)
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Errorf("handler read: %v", err)
				return
			}
			_, _ = io.WriteString(c, "hello "+line)
		})
	})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := n.g.dialTCP(ctx, dst)
	if err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	defer c.Close()
	f := <-flows
	if f.Dst != dst || f.Src.Addr() != DefaultGuestIP || f.Src.Port() == 0 {
		t.Errorf("flow = %+v, want dst %s from %s", f, dst, DefaultGuestIP)
	}
	if _, err := io.WriteString(c, "guest\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != "hello guest\n" {
		t.Errorf("got %q", got)
	}
}

func TestTCPReject(t *testing.T) {
	called := make(chan FlowInfo, 1)
	n := newTestNet(t, Config{}, func(_ context.Context, f FlowInfo) TCPAction {
		called <- f
		return Reject()
	})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	dst := netip.MustParseAddrPort("1.2.3.4:22")
	c, err := n.g.dialTCP(ctx, dst)
	if err == nil {
		c.Close()
		t.Fatal("dial succeeded, want connection refused")
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial error = %v, want connection refused", err)
	}
	if f := <-called; f.Dst != dst {
		t.Errorf("flow dst = %s, want %s", f.Dst, dst)
	}
}

func TestListenTCPOnGateway(t *testing.T) {
	n := newTestNet(t, Config{}, func(context.Context, FlowInfo) TCPAction {
		t.Error("flow to a gateway listener reached FlowHandler.TCP")
		return Reject()
	})
	ln, err := n.s.ListenTCP(3128)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		_, _ = io.WriteString(c, "proxy")
		c.Close()
		if _, err := ln.Accept(); err == nil {
			t.Error("accept after Close succeeded")
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := n.g.dialTCP(ctx, netip.AddrPortFrom(DefaultGateway, 3128))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "proxy" {
		t.Errorf("got %q from the gateway listener", got)
	}
	// Close ends the second Accept.
	if err := n.s.Close(); err != nil {
		t.Fatal(err)
	}
	<-served
	if _, err := n.s.ListenTCP(3129); !errors.Is(err, ErrClosed) {
		t.Errorf("ListenTCP after Close = %v, want ErrClosed", err)
	}
}

func TestUDPDropped(t *testing.T) {
	n := newTestNet(t, Config{}, nil)
	dst := netip.MustParseAddrPort("5.6.7.8:9999")
	c, err := n.g.dialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("escape")); err != nil {
		t.Fatal(err)
	}
	src := c.LocalAddr().(*net.UDPAddr).AddrPort()
	n.flows.waitDropped(t, dropped{FlowInfo{Src: netip.AddrPortFrom(DefaultGuestIP, src.Port()), Dst: dst}, "udp"})
}

// TestICMPEchoDropped sends an echo request for an outside address as a
// hand-made frame and checks no reply comes, and that the same frame does
// get a reply when ICMP reaches gVisor: the filter is what stops it.
func TestICMPEchoDropped(t *testing.T) {
	echo := make([]byte, header.ICMPv4MinimumSize+8)
	icmp := header.ICMPv4(echo)
	icmp.SetType(header.ICMPv4Echo)
	icmp.SetIdent(7)
	icmp.SetSequence(1)
	copy(echo[header.ICMPv4MinimumSize:], "sbxping!")
	icmp.SetChecksum(^checksum(echo))
	outside := netip.MustParseAddr("8.8.8.8")
	frame := ipv4Frame(testGuestMAC, gatewayMAC, DefaultGuestIP, outside, header.ICMPv4ProtocolNumber, echo)
	isReply := func(ip header.IPv4) bool {
		return ip.TransportProtocol() == header.ICMPv4ProtocolNumber &&
			header.ICMPv4(ip.Payload()).Type() == header.ICMPv4EchoReply
	}

	t.Run("filtered", func(t *testing.T) {
		n := newTestNet(t, Config{}, nil)
		if err := n.g.sendFrame(frame); err != nil {
			t.Fatal(err)
		}
		n.flows.waitDropped(t, dropped{FlowInfo{Src: netip.AddrPortFrom(DefaultGuestIP, 0), Dst: netip.AddrPortFrom(outside, 0)}, "icmp"})
		if ip := n.g.nextIPv4(500*time.Millisecond, isReply); ip != nil {
			t.Fatalf("echo request to %s got a reply from %s", outside, ip.SourceAddress())
		}
	})
	t.Run("control without filter", func(t *testing.T) {
		n := newTestNet(t, Config{passICMP: true}, nil)
		if err := n.g.sendFrame(frame); err != nil {
			t.Fatal(err)
		}
		if ip := n.g.nextIPv4(5*time.Second, isReply); ip == nil {
			t.Skip("gVisor did not answer the echo request even without the filter")
		}
	})
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

func TestDNS(t *testing.T) {
	api := netip.MustParseAddr("93.184.216.34")
	api6 := netip.MustParseAddr("2606:2800:220:1:248:1893:25c8:1946")
	n := newTestNet(t, Config{DNS: fakeDNS{"api.example.com": {api, api6}}}, nil)
	server := netip.AddrPortFrom(DefaultGateway, DNSPort)

	query := func(t *testing.T, conn net.Conn, name string, qtype uint16) *dns.Msg {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		dc := &dns.Conn{Conn: conn}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		if err := dc.WriteMsg(m); err != nil {
			t.Fatalf("send query: %v", err)
		}
		r, err := dc.ReadMsg()
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		return r
	}
	check := func(t *testing.T, conn net.Conn) {
		r := query(t, conn, "API.example.com", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("A api.example.com: rcode %s, answers %v", dns.RcodeToString[r.Rcode], r.Answer)
		}
		a, ok := r.Answer[0].(*dns.A)
		if !ok || a.A.String() != api.String() || a.Hdr.Ttl != 10 {
			t.Errorf("A answer = %v, want %s with TTL 10", r.Answer[0], api)
		}
		r = query(t, conn, "api.example.com", dns.TypeAAAA)
		if aaaa, ok := r.Answer[0].(*dns.AAAA); len(r.Answer) != 1 || !ok || aaaa.AAAA.String() != api6.String() {
			t.Errorf("AAAA answers = %v, want %s", r.Answer, api6)
		}
		r = query(t, conn, "api.example.com", dns.TypeMX)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			t.Errorf("MX: rcode %s, answers %v; want empty NOERROR", dns.RcodeToString[r.Rcode], r.Answer)
		}
		r = query(t, conn, "denied.example", dns.TypeA)
		if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
			t.Errorf("denied name: rcode %s, answers %v; want REFUSED", dns.RcodeToString[r.Rcode], r.Answer)
		}
	}
	t.Run("udp", func(t *testing.T) {
		c, err := n.g.dialUDP(server)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		check(t, c)
	})
	t.Run("tcp", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		c, err := n.g.dialTCP(ctx, server)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		check(t, c)
	})
	t.Run("udp to another server is dropped", func(t *testing.T) {
		other := netip.MustParseAddrPort("8.8.8.8:53")
		c, err := n.g.dialUDP(other)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		m := new(dns.Msg)
		m.SetQuestion("api.example.com.", dns.TypeA)
		b, _ := m.Pack()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		src := c.LocalAddr().(*net.UDPAddr).AddrPort()
		n.flows.waitDropped(t, dropped{FlowInfo{Src: netip.AddrPortFrom(DefaultGuestIP, src.Port()), Dst: other}, "udp"})
	})
}

// TestCloseEndsFlows checks Close returns while a handler is still reading:
// Close closes the flow's connection and waits for the handler.
func TestCloseEndsFlows(t *testing.T) {
	inHandler := make(chan struct{})
	handlerDone := make(chan struct{})
	n := newTestNet(t, Config{}, func(context.Context, FlowInfo) TCPAction {
		return Accept(func(c net.Conn) {
			defer close(handlerDone)
			close(inHandler)
			_, _ = io.Copy(io.Discard, c)
		})
	})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := n.g.dialTCP(ctx, netip.MustParseAddrPort("1.2.3.4:5432"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-inHandler
	closed := make(chan error, 1)
	go func() { closed <- n.s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return while a flow handler was reading")
	}
	select {
	case <-handlerDone:
	default:
		t.Error("Close returned before the handler")
	}
	if err := n.s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := n.s.AcceptQEMU(t.Context(), nopConn{}); !errors.Is(err, ErrClosed) {
		t.Errorf("AcceptQEMU after Close = %v, want ErrClosed", err)
	}
}

type nopConn struct{ net.Conn }

func (nopConn) Close() error { return nil }

func TestOneGuestLinkAtATime(t *testing.T) {
	n := newTestNet(t, Config{}, nil)
	a, b := net.Pipe()
	defer b.Close()
	if err := n.s.AcceptQEMU(t.Context(), a); !errors.Is(err, ErrLinkBusy) {
		t.Errorf("second AcceptQEMU = %v, want ErrLinkBusy", err)
	}
}
