package netstack

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

var testGuestMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}

// fakeGuest is a second gVisor stack playing the VM: it speaks QEMU's stream
// framing (4-byte big-endian length, then the Ethernet frame) on one end of
// a net.Pipe whose other end the Stack under test serves. Every frame it
// receives is also copied to frames, so tests can look at raw replies, and
// sendFrame writes hand-made frames past its stack.
type fakeGuest struct {
	stack  *stack.Stack
	ch     *channel.Endpoint
	conn   net.Conn
	frames chan []byte

	wmu sync.Mutex // serialises writes to conn
	wg  sync.WaitGroup
}

// testNet is a Stack under test with a fake guest attached.
type testNet struct {
	s     *Stack
	g     *fakeGuest
	flows *fakeFlows
}

// fakeFlows is a FlowHandler whose TCP verdict a test sets and which records
// every drop.
type fakeFlows struct {
	tcp     func(ctx context.Context, f FlowInfo) TCPAction
	dropped chan dropped
}

type dropped struct {
	f     FlowInfo
	proto string
}

func (f *fakeFlows) TCP(ctx context.Context, fi FlowInfo) TCPAction {
	if f.tcp == nil {
		return Reject()
	}
	return f.tcp(ctx, fi)
}

func (f *fakeFlows) Dropped(fi FlowInfo, proto string) {
	select {
	case f.dropped <- dropped{fi, proto}:
	default:
	}
}

// waitDropped waits for a drop report matching want.
func (f *fakeFlows) waitDropped(t *testing.T, want dropped) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case d := <-f.dropped:
			if d == want {
				return
			}
		case <-timeout:
			t.Fatalf("no drop reported for %+v", want)
		}
	}
}

// fakeDNS is a DNSHandler answering from a map; names not in it are refused.
type fakeDNS map[string][]netip.Addr

func (d fakeDNS) Resolve(_ context.Context, name string, _ uint16) ([]netip.Addr, int) {
	ips, ok := d[name]
	if !ok {
		return nil, 5 // REFUSED
	}
	return ips, 0
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newTestNet starts a Stack with cfg's handlers (defaults filled in) and
// attaches a fake guest configured statically as GuestIP/24 via Gateway.
func newTestNet(t *testing.T, cfg Config, tcp func(context.Context, FlowInfo) TCPAction) *testNet {
	t.Helper()
	flows := &fakeFlows{tcp: tcp, dropped: make(chan dropped, 64)}
	cfg.Flows = flows
	cfg.GuestMAC = testGuestMAC
	if cfg.DNS == nil {
		cfg.DNS = fakeDNS{}
	}
	cfg.Log = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	host, guestEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	acceptDone := make(chan error, 1)
	go func() { acceptDone <- s.AcceptQEMU(ctx, host) }()
	for deadline := time.Now().Add(5 * time.Second); !s.linkAttached(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("AcceptQEMU did not attach the guest link")
		}
	}
	g := newFakeGuest(t, guestEnd, testGuestMAC, s.cfg.GuestIP, s.cfg.Gateway, s.cfg.Subnet)
	t.Cleanup(func() {
		cancel()
		if err := <-acceptDone; err != nil {
			t.Errorf("AcceptQEMU: %v", err)
		}
		g.close()
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &testNet{s: s, g: g, flows: flows}
}

func newFakeGuest(t *testing.T, conn net.Conn, mac net.HardwareAddr, ip, gw netip.Addr, subnet netip.Prefix) *fakeGuest {
	t.Helper()
	g := &fakeGuest{
		stack: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
		}),
		ch:     channel.New(256, 1500, tcpip.LinkAddress(mac)),
		conn:   conn,
		frames: make(chan []byte, 256),
	}
	if err := g.stack.CreateNIC(1, ethernet.New(g.ch)); err != nil {
		t.Fatalf("guest NIC: %s", err)
	}
	if err := g.stack.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(ip.As4()), PrefixLen: subnet.Bits()},
	}, stack.AddressProperties{}); err != nil {
		t.Fatalf("guest address: %s", err)
	}
	sub, _ := tcpip.NewSubnet(tcpip.AddrFrom4(subnet.Masked().Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(subnet.Bits(), 32)))
	g.stack.SetRouteTable([]tcpip.Route{
		{Destination: sub, NIC: 1},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gw.As4()), NIC: 1},
	})
	g.wg.Go(g.txLoop)
	g.wg.Go(g.rxLoop)
	return g
}

// txLoop sends what the guest stack writes.
func (g *fakeGuest) txLoop() {
	for {
		pkt := g.ch.ReadContext(context.Background())
		if pkt == nil {
			return
		}
		frame := pkt.ToView().AsSlice()
		err := g.sendFrame(frame)
		pkt.DecRef()
		if err != nil {
			return
		}
	}
}

// rxLoop feeds the guest stack what the Stack sends.
func (g *fakeGuest) rxLoop() {
	var size [4]byte
	for {
		if _, err := io.ReadFull(g.conn, size[:]); err != nil {
			return
		}
		frame := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(g.conn, frame); err != nil {
			return
		}
		select {
		case g.frames <- frame:
		default:
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		g.ch.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

func (g *fakeGuest) sendFrame(frame []byte) error {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	buf := make([]byte, 4+len(frame))
	binary.BigEndian.PutUint32(buf, uint32(len(frame)))
	copy(buf[4:], frame)
	_, err := g.conn.Write(buf)
	return err
}

func (g *fakeGuest) close() {
	_ = g.conn.Close()
	g.ch.Close()
	g.stack.Close()
	g.wg.Wait()
	g.stack.Wait()
}

func (g *fakeGuest) dialTCP(ctx context.Context, dst netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, g.stack, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()}, ipv4.ProtocolNumber)
}

func (g *fakeGuest) dialUDP(dst netip.AddrPort) (*gonet.UDPConn, error) {
	return gonet.DialUDP(g.stack, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()}, ipv4.ProtocolNumber)
}

// ipv4Frame builds an Ethernet frame holding one IPv4 packet.
func ipv4Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	frame := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+len(payload))
	header.Ethernet(frame).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(srcMAC),
		DstAddr: tcpip.LinkAddress(dstMAC),
		Type:    header.IPv4ProtocolNumber,
	})
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + len(payload)),
		TTL:         64,
		Protocol:    uint8(proto),
		SrcAddr:     tcpip.AddrFrom4(src.As4()),
		DstAddr:     tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(frame[header.EthernetMinimumSize+header.IPv4MinimumSize:], payload)
	return frame
}

// udpPayload builds a UDP datagram without checksum (allowed over IPv4).
func udpPayload(srcPort, dstPort uint16, data []byte) []byte {
	b := make([]byte, header.UDPMinimumSize+len(data))
	header.UDP(b).Encode(&header.UDPFields{SrcPort: srcPort, DstPort: dstPort, Length: uint16(len(b))})
	copy(b[header.UDPMinimumSize:], data)
	return b
}

// nextIPv4 returns the next received frame holding an IPv4 packet that
// match accepts, or nil when none came within d.
func (g *fakeGuest) nextIPv4(d time.Duration, match func(ip header.IPv4) bool) header.IPv4 {
	timeout := time.After(d)
	for {
		select {
		case f := <-g.frames:
			eth := header.Ethernet(f)
			if len(f) < header.EthernetMinimumSize || eth.Type() != header.IPv4ProtocolNumber {
				continue
			}
			ip := header.IPv4(f[header.EthernetMinimumSize:])
			if ip.IsValid(len(ip)) && match(ip) {
				return ip
			}
		case <-timeout:
			return nil
		}
	}
}

func (s *Stack) linkAttached() bool {
	s.link.mu.Lock()
	defer s.link.mu.Unlock()
	return s.link.conn != nil
}
