package netstack

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/containers/gvisor-tap-vsock/pkg/tap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// maxFrameSize bounds one frame from QEMU: the largest Ethernet frame a
// virtio-net device can hand over (64 KiB of payload with offloads) plus
// headers. A bigger length prefix means the stream is corrupt.
const maxFrameSize = 65536 + header.EthernetMinimumSize + 4

// ErrLinkBusy is returned by AcceptQEMU while another QEMU connection is
// being served: a sandbox has one NIC.
var ErrLinkBusy = errors.New("a guest link is already attached")

// guestLink carries Ethernet frames between gvisor-tap-vsock's link endpoint
// and one QEMU stream connection. It stands where gvisor-tap-vsock puts its
// tap.Switch: a sandbox has one guest, so there is nothing to switch, and the
// Switch logs through logrus's global logger, straight to stderr, each time
// a connection ends.
type guestLink struct {
	ep      *tap.LinkEndpoint
	gateway tcpip.LinkAddress

	mu sync.Mutex
	// conn is the attached QEMU connection, nil when none; guarded by mu.
	// Holding mu also serialises writes to it, one frame per Write.
	conn net.Conn
	// wbuf is the write buffer; guarded by mu.
	wbuf []byte
}

var _ tap.NetworkSwitch = (*guestLink)(nil)

// DeliverNetworkPacket implements tap.NetworkSwitch: the link endpoint calls
// it with each frame (Ethernet header included) the stack sends to the guest.
// Frames sent while no guest is attached are dropped, as on a wire.
func (l *guestLink) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	v := pkt.ToView()
	defer v.Release()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return
	}
	l.wbuf = binary.BigEndian.AppendUint32(l.wbuf[:0], uint32(v.Size()))
	l.wbuf = append(l.wbuf, v.AsSlice()...)
	// A failed write means the connection is going away: serve's read
	// fails too and ends it.
	_, _ = l.conn.Write(l.wbuf)
}

// attach makes conn the guest's connection, or fails with ErrLinkBusy.
func (l *guestLink) attach(conn net.Conn) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		return ErrLinkBusy
	}
	l.conn = conn
	return nil
}

func (l *guestLink) detach(conn net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == conn {
		l.conn = nil
	}
}

// serve reads frames from conn and hands those addressed to the gateway (or
// broadcast) to the stack, until a read fails.
func (l *guestLink) serve(conn net.Conn) error {
	r := bufio.NewReaderSize(conn, 64<<10)
	var size [4]byte
	frame := make([]byte, maxFrameSize)
	for {
		if _, err := io.ReadFull(r, size[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(size[:])
		if n > maxFrameSize {
			return fmt.Errorf("frame of %d bytes: longer than %d", n, maxFrameSize)
		}
		f := frame[:n]
		if _, err := io.ReadFull(r, f); err != nil {
			return err
		}
		if n < header.EthernetMinimumSize {
			continue
		}
		eth := header.Ethernet(f)
		if dst := eth.DestinationAddress(); dst != l.gateway && dst != header.EthernetBroadcastAddress {
			// Multicast, or unicast to a station that is not there.
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
			Payload: buffer.MakeWithData(f[header.EthernetMinimumSize:]),
		})
		l.ep.DeliverNetworkPacket(eth.Type(), pkt)
		pkt.DecRef()
	}
}
