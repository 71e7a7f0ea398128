package netstack

import (
	"context"
	"net"
	"net/netip"
)

// FlowInfo names one flow from the guest's point of view: Src is the guest's
// address and port, Dst the address and port it asked for. ICMP and other
// portless protocols carry port 0.
type FlowInfo struct {
	Src netip.AddrPort
	Dst netip.AddrPort
}

// FlowHandler is the supervisor's per-flow hook. The Stack holds no policy:
// every decision is made here.
type FlowHandler interface {
	// TCP is called once per new TCP connection (per SYN no listener in the
	// stack claims), in its own goroutine, before the handshake completes:
	// the guest waits until it returns. ctx is cancelled when the Stack is
	// closed. The returned action says whether the guest gets a reset or an
	// established connection; the zero TCPAction rejects.
	TCP(ctx context.Context, f FlowInfo) TCPAction
	// Dropped reports a packet the Stack dropped: proto is "udp", "icmp", or
	// the IP protocol number in decimal. It is called on the packet path, once
	// per packet, so it must return quickly and must not block.
	Dropped(f FlowInfo, proto string)
}

// TCPAction is FlowHandler.TCP's verdict. Build it with Reject or Accept.
type TCPAction struct {
	handle func(net.Conn)
	done   func()
}

// WithDone returns a that also calls done exactly once when the flow is
// over: after handle returned, or when handle will never run (the guest
// gave up during the handshake, the Stack closed, the flow was rejected).
func (a TCPAction) WithDone(done func()) TCPAction {
	a.done = done
	return a
}

// Reject answers the guest's SYN with a reset: the guest sees "connection
// refused".
func Reject() TCPAction { return TCPAction{} }

// Accept completes the handshake and calls handle, in the flow's goroutine,
// with the guest's side of the connection (its RemoteAddr is the guest, its
// LocalAddr the destination the guest asked for). The Stack closes the
// connection when handle returns, and closes it earlier if the Stack is
// closed; handle must return once reads or writes fail. Accept(nil) rejects.
func Accept(handle func(net.Conn)) TCPAction { return TCPAction{handle: handle} }

// Rejected reports whether a is a rejection.
func (a TCPAction) Rejected() bool { return a.handle == nil }
