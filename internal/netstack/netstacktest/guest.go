// Package netstacktest plays the VM for tests of code built on a
// netstack.Stack: a second gVisor stack speaking QEMU's stream framing on
// a pipe the Stack serves, so a test can open TCP connections from the
// guest's side exactly as a program in the VM would.
package netstacktest

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
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

	"github.com/sbx-dev/sbx/internal/netstack"
)

// Guest is the fake VM: netstack.DefaultGuestIP on netstack.DefaultSubnet,
// routed through netstack.DefaultGateway.
type Guest struct {
	stack *stack.Stack
	ch    *channel.Endpoint
	conn  net.Conn
	wmu   sync.Mutex
	wg    sync.WaitGroup
}

// Attach connects a fake guest with mac to s (which must use the default
// addresses) and detaches it when the test ends.
func Attach(t testing.TB, s *netstack.Stack, mac net.HardwareAddr) *Guest {
	t.Helper()
	host, guestEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.AcceptQEMU(ctx, host) }()
	g := &Guest{
		stack: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
		}),
		ch:   channel.New(256, uint32(netstack.DefaultMTU), tcpip.LinkAddress(mac)),
		conn: guestEnd,
	}
	// Linux in the VM keeps its own TIME-WAIT sockets; this stand-in in
	// the test's process frees them soon, so they do not count as the
	// host's memory.
	tw := tcpip.TCPTimeWaitTimeoutOption(time.Second)
	if err := g.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); err != nil {
		t.Fatalf("guest TIME-WAIT: %s", err)
	}
	if err := g.stack.CreateNIC(1, ethernet.New(g.ch)); err != nil {
		t.Fatalf("guest NIC: %s", err)
	}
	subnet := netstack.DefaultSubnet
	if err := g.stack.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(netstack.DefaultGuestIP.As4()), PrefixLen: subnet.Bits()},
	}, stack.AddressProperties{}); err != nil {
		t.Fatalf("guest address: %s", err)
	}
	sub, _ := tcpip.NewSubnet(tcpip.AddrFrom4(subnet.Masked().Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(subnet.Bits(), 32)))
	g.stack.SetRouteTable([]tcpip.Route{
		{Destination: sub, NIC: 1},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(netstack.DefaultGateway.As4()), NIC: 1},
	})
	g.wg.Go(g.tx)
	g.wg.Go(g.rx)
	t.Cleanup(func() {
		cancel()
		<-done
		_ = g.conn.Close()
		g.ch.Close()
		g.stack.Close()
		g.wg.Wait()
		g.stack.Wait()
	})
	return g
}

func (g *Guest) tx() {
	for {
		pkt := g.ch.ReadContext(context.Background())
		if pkt == nil {
			return
		}
		frame := pkt.ToView().AsSlice()
		buf := make([]byte, 4+len(frame))
		binary.BigEndian.PutUint32(buf, uint32(len(frame)))
		copy(buf[4:], frame)
		pkt.DecRef()
		g.wmu.Lock()
		_, err := g.conn.Write(buf)
		g.wmu.Unlock()
		if err != nil {
			return
		}
	}
}

func (g *Guest) rx() {
	var size [4]byte
	for {
		if _, err := io.ReadFull(g.conn, size[:]); err != nil {
			return
		}
		frame := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(g.conn, frame); err != nil {
			return
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		g.ch.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

// DialTCP opens a TCP connection from the guest to dst (IPv4).
func (g *Guest) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return gonet.DialContextTCP(ctx, g.stack, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()}, ipv4.ProtocolNumber)
}

// DialUDP opens a UDP socket from the guest to dst (IPv4).
func (g *Guest) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	return gonet.DialUDP(g.stack, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()}, ipv4.ProtocolNumber)
}
