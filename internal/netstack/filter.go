package netstack

import (
	"net/netip"
	"strconv"

	"github.com/containers/gvisor-tap-vsock/pkg/tap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// filterLink is gvisor-tap-vsock's link endpoint with a filter in front of
// the stack: every frame the guest sends passes through filterDispatcher
// before gVisor sees it.
type filterLink struct {
	*tap.LinkEndpoint
	s *Stack
}

var _ stack.LinkEndpoint = (*filterLink)(nil)

// Attach implements stack.LinkEndpoint.
func (l *filterLink) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		l.LinkEndpoint.Attach(nil)
		return
	}
	l.LinkEndpoint.Attach(&filterDispatcher{next: d, s: l.s})
}

// filterDispatcher lets ARP and IPv4 TCP and UDP through and drops the rest.
// ICMP must never reach gVisor: in promiscuous mode its IPv4 endpoint answers
// echo requests for any destination, so a guest's ping would seem to reach
// hosts no packet was sent to.
type filterDispatcher struct {
	next stack.NetworkDispatcher
	s    *Stack
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (d *filterDispatcher) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	switch proto {
	case header.ARPProtocolNumber:
		d.next.DeliverNetworkPacket(proto, pkt)
		return
	case header.IPv4ProtocolNumber:
	default:
		// IPv6 (router and neighbour solicitations every guest sends) and
		// anything else: there is no stack for it. Not reported: it is noise.
		return
	}
	b, ok := pkt.Data().PullUp(header.IPv4MinimumSize)
	if !ok {
		return
	}
	ip := header.IPv4(b)
	if !ip.IsValid(pkt.Data().Size()) {
		return
	}
	switch tp := ip.TransportProtocol(); tp {
	case header.TCPProtocolNumber, header.UDPProtocolNumber:
		d.next.DeliverNetworkPacket(proto, pkt)
	case header.ICMPv4ProtocolNumber:
		if d.s.cfg.passICMP {
			d.next.DeliverNetworkPacket(proto, pkt)
			return
		}
		d.s.cfg.Flows.Dropped(ipFlow(ip), "icmp")
	default:
		d.s.cfg.Flows.Dropped(ipFlow(ip), strconv.Itoa(int(tp)))
	}
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (d *filterDispatcher) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.next.DeliverLinkPacket(proto, pkt)
}

func ipFlow(ip header.IPv4) FlowInfo {
	return FlowInfo{
		Src: netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), 0),
		Dst: netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), 0),
	}
}
