package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dhcp"
	"github.com/containers/gvisor-tap-vsock/pkg/tap"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Defaults used by New for zero Config fields.
var (
	DefaultSubnet  = netip.MustParsePrefix("192.168.127.0/24")
	DefaultGateway = netip.MustParseAddr("192.168.127.1")
	DefaultGuestIP = netip.MustParseAddr("192.168.127.2")
)

const (
	// DefaultMTU is the link MTU when Config.MTU is zero.
	DefaultMTU = 1500
	// DNSPort is the port of the DNS server on the gateway (UDP and TCP).
	DNSPort = 53

	nicID = 1 // gvisor-tap-vsock's DHCP server binds NIC 1

	// maxInFlightSYNs bounds TCP handshakes waiting for FlowHandler.TCP.
	maxInFlightSYNs = 512

	// timeWait is how long a closed TCP connection lingers in TIME-WAIT.
	timeWait = 5 * time.Second
)

// gatewayMAC is the gateway's link address: locally administered, fixed.
var gatewayMAC = net.HardwareAddr{0x02, 0x73, 0x62, 0x78, 0x00, 0x01}

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("netstack closed")

// Config describes one sandbox's network. Zero Subnet, Gateway, GuestIP and
// MTU take the defaults above; GuestMAC, Flows and DNS are required.
type Config struct {
	Subnet   netip.Prefix
	Gateway  netip.Addr
	GuestIP  netip.Addr
	GuestMAC net.HardwareAddr
	MTU      int
	// Flows decides every TCP flow and hears about every dropped packet.
	Flows FlowHandler
	// DNS answers A and AAAA queries sent to Gateway:53.
	DNS DNSHandler
	// Log receives debug and error records; nil discards them.
	Log *slog.Logger

	// passICMP lets ICMP through to gVisor: tests only, to show what the
	// filter prevents.
	passICMP bool
}

// withDefaults fills zero fields and validates the result, reporting every
// problem at once.
func (c Config) withDefaults() (Config, error) {
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	if !c.Gateway.IsValid() {
		c.Gateway = DefaultGateway
	}
	if !c.GuestIP.IsValid() {
		c.GuestIP = DefaultGuestIP
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var errs []error
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() > 30 {
		errs = append(errs, fmt.Errorf("subnet %s: want an IPv4 prefix of /30 or shorter", c.Subnet))
	}
	c.Subnet = c.Subnet.Masked()
	if !c.Gateway.Is4() || !c.Subnet.Contains(c.Gateway) {
		errs = append(errs, fmt.Errorf("gateway %s: not an IPv4 address in %s", c.Gateway, c.Subnet))
	}
	if !c.GuestIP.Is4() || !c.Subnet.Contains(c.GuestIP) || c.GuestIP == c.Gateway {
		errs = append(errs, fmt.Errorf("guest IP %s: not an IPv4 address in %s other than the gateway", c.GuestIP, c.Subnet))
	}
	if len(c.GuestMAC) != 6 {
		errs = append(errs, fmt.Errorf("guest MAC %q: want 6 bytes", c.GuestMAC.String()))
	}
	if c.MTU < 576 || c.MTU > 65535 {
		errs = append(errs, fmt.Errorf("MTU %d: want 576 to 65535", c.MTU))
	}
	if c.Flows == nil {
		errs = append(errs, errors.New("flows: a FlowHandler is required"))
	}
	if c.DNS == nil {
		errs = append(errs, errors.New("DNS: a DNSHandler is required"))
	}
	return c, errors.Join(errs...)
}

// Stack is one sandbox's user-mode network. Create it with New, attach the
// VM with AcceptQEMU, and release it with Close. Its methods are safe for
// concurrent use.
type Stack struct {
	cfg Config
	log *slog.Logger

	// ctx is the base context of the flows and DNS queries; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	stack  *stack.Stack
	link   *guestLink
	dhcp   *dhcp.Server
	dns    *dnsServer
	gwAddr tcpip.Address

	// wg counts every goroutine the Stack runs or hands a connection to:
	// servers, QEMU connections, TCP flow handlers.
	wg sync.WaitGroup

	mu sync.Mutex
	// closed is set by Close; guarded by mu.
	closed bool
	// conns holds the QEMU connections being served; guarded by mu.
	conns map[net.Conn]struct{}
	// listeners holds the listeners from ListenTCP; guarded by mu.
	listeners map[net.Listener]struct{}
	// flows holds the accepted TCP connections being served; guarded by mu.
	flows map[net.Conn]struct{}

	closeOnce sync.Once
	closeErr  error
}

// New builds the network described by cfg and starts its DHCP and DNS
// servers. Nothing is reachable until a VM is attached with AcceptQEMU. On
// error nothing is left running. The caller must Close the Stack.
func New(ctx context.Context, cfg Config) (*Stack, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("netstack config: %w", err)
	}
	s := &Stack{
		cfg:       cfg,
		log:       cfg.Log.With("component", "netstack"),
		gwAddr:    tcpip.AddrFrom4(cfg.Gateway.As4()),
		conns:     make(map[net.Conn]struct{}),
		listeners: make(map[net.Listener]struct{}),
		flows:     make(map[net.Conn]struct{}),
	}
	// The base context outlives New's ctx on purpose: the Stack lives until Close.
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := s.build(); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Stack) build() error {
	cfg := s.cfg
	link, err := tap.NewLinkEndpoint(false, uint32(cfg.MTU), gatewayMAC.String(), cfg.Gateway.String(), nil)
	if err != nil {
		return fmt.Errorf("create link endpoint: %w", err)
	}
	s.link = &guestLink{ep: link, gateway: tcpip.LinkAddress(gatewayMAC)}
	link.Connect(s.link)

	s.stack = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	// TIME-WAIT guards against stray segments of an old connection on a
	// real network; on this one link a short wait frees closed flows'
	// memory soon after a flood.
	tw := tcpip.TCPTimeWaitTimeoutOption(timeWait)
	if terr := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); terr != nil {
		return fmt.Errorf("set TIME-WAIT: %s", terr)
	}
	if terr := s.stack.CreateNIC(nicID, &filterLink{LinkEndpoint: link, s: s}); terr != nil {
		return fmt.Errorf("create NIC: %s", terr)
	}
	if terr := s.stack.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: s.gwAddr.WithPrefix(),
	}, stack.AddressProperties{}); terr != nil {
		return fmt.Errorf("add gateway address: %s", terr)
	}
	// Promiscuous: accept packets for any destination; spoofing: answer
	// from that destination. Together they let a flow to any IP reach the
	// TCP forwarder below.
	if terr := s.stack.SetPromiscuousMode(nicID, true); terr != nil {
		return fmt.Errorf("set promiscuous mode: %s", terr)
	}
	if terr := s.stack.SetSpoofing(nicID, true); terr != nil {
		return fmt.Errorf("set spoofing: %s", terr)
	}
	subnet, serr := tcpip.NewSubnet(tcpip.AddrFrom4(cfg.Subnet.Addr().As4()),
		tcpip.MaskFromBytes(net.CIDRMask(cfg.Subnet.Bits(), 32)))
	if serr != nil {
		return fmt.Errorf("subnet %s: %w", cfg.Subnet, serr)
	}
	s.stack.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: nicID}})

	fwd := tcp.NewForwarder(s.stack, 0, maxInFlightSYNs, s.handleSYN)
	s.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	s.stack.SetTransportProtocolHandler(udp.ProtocolNumber, s.handleUDP)

	if err := s.startDHCP(); err != nil {
		return err
	}
	dnsSrv, err := startDNS(s)
	if err != nil {
		return err
	}
	s.dns = dnsSrv
	return nil
}

func (s *Stack) startDHCP() error {
	cfg := s.cfg
	pool := tap.NewIPPool(&net.IPNet{
		IP:   cfg.Subnet.Addr().AsSlice(),
		Mask: net.CIDRMask(cfg.Subnet.Bits(), 32),
	})
	pool.Reserve(net.IP(cfg.Gateway.AsSlice()), gatewayMAC.String())
	pool.Reserve(net.IP(cfg.GuestIP.AsSlice()), cfg.GuestMAC.String())
	srv, err := dhcp.New(&types.Configuration{
		Subnet:    cfg.Subnet.String(),
		GatewayIP: cfg.Gateway.String(),
		MTU:       cfg.MTU,
	}, s.stack, pool)
	if err != nil {
		return fmt.Errorf("start DHCP server: %w", err)
	}
	s.dhcp = srv
	s.wg.Go(func() {
		if err := srv.Serve(); err != nil && !s.isClosed() {
			s.log.Error("DHCP server stopped", "err", err)
		}
	})
	return nil
}

// AcceptQEMU serves one QEMU `-netdev stream` (or `-netdev socket`)
// connection: Ethernet frames, each preceded by its length as 4 bytes big
// endian. It blocks until the connection ends, ctx is cancelled, or the Stack
// is closed, and it closes conn before returning. One connection is served at
// a time: while one is, AcceptQEMU fails at once with ErrLinkBusy; after it
// ended, QEMU may connect again. It returns nil when the connection ended
// because of ctx or Close or because QEMU closed it (io.EOF), ErrClosed when
// called after Close, and otherwise the error that ended it.
func (s *Stack) AcceptQEMU(ctx context.Context, conn net.Conn) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = conn.Close()
		return ErrClosed
	}
	if err := s.link.attach(conn); err != nil {
		s.mu.Unlock()
		_ = conn.Close()
		return err
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.link.detach(conn)
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		s.wg.Done()
	}()

	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	s.log.Debug("guest link connected")
	err := s.link.serve(conn)
	_ = conn.Close()
	if ctx.Err() != nil || s.isClosed() || errors.Is(err, io.EOF) {
		s.log.Debug("guest link disconnected")
		return nil
	}
	return fmt.Errorf("serve guest link: %w", err)
}

// ListenTCP listens on Gateway:port inside the network. Connections the guest
// makes to it reach the listener and are not shown to FlowHandler.TCP. The
// listener is closed by Close at the latest.
func (s *Stack) ListenTCP(port uint16) (net.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	ln, err := gonet.ListenTCP(s.stack, tcpip.FullAddress{NIC: nicID, Addr: s.gwAddr, Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("listen on %s:%d: %w", s.cfg.Gateway, port, err)
	}
	s.listeners[ln] = struct{}{}
	return ln, nil
}

// Close disconnects the VM, stops the servers, closes every listener and
// accepted flow, and waits for every goroutine the Stack started and every
// TCP handler it called to return. It is idempotent and safe after a failed
// New; later calls return the first call's result.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Stack) close() error {
	s.mu.Lock()
	s.closed = true
	conns := make([]io.Closer, 0, len(s.conns)+len(s.listeners)+len(s.flows))
	for c := range s.conns {
		conns = append(conns, c)
	}
	for l := range s.listeners {
		conns = append(conns, l)
	}
	for c := range s.flows {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cancel()

	var errs []error
	for _, c := range conns {
		_ = c.Close()
	}
	if s.dns != nil {
		if err := s.dns.close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.dhcp != nil {
		if err := s.dhcp.Underlying.Close(); err != nil {
			errs = append(errs, fmt.Errorf("stop DHCP server: %w", err))
		}
	}
	if s.stack != nil {
		s.stack.Close()
	}
	s.wg.Wait()
	if s.stack != nil {
		s.stack.Wait()
	}
	return errors.Join(errs...)
}

func (s *Stack) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// handleSYN runs, in a goroutine of gVisor's forwarder, for each new TCP
// connection that no listener in the stack claims.
func (s *Stack) handleSYN(r *tcp.ForwarderRequest) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		r.Complete(true)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	id := r.ID()
	info := FlowInfo{
		Src: netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort),
	}
	action := s.cfg.Flows.TCP(s.ctx, info)
	if action.done != nil {
		defer action.done()
	}
	if action.handle == nil {
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		// The guest gave up (or reset) before the handshake finished.
		r.Complete(true)
		s.log.Debug("tcp handshake failed", "src", info.Src, "dst", info.Dst, "err", terr.String())
		return
	}
	r.Complete(false)
	conn := gonet.NewTCPConn(&wq, ep)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = conn.Close()
		return
	}
	s.flows[conn] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.flows, conn)
		s.mu.Unlock()
		_ = conn.Close()
	}()
	action.handle(conn)
}

// handleUDP sees every UDP packet no socket in the stack claims (the DNS
// server on gateway:53 and the DHCP server on :67 do): it drops it.
func (s *Stack) handleUDP(id stack.TransportEndpointID, _ *stack.PacketBuffer) bool {
	s.cfg.Flows.Dropped(FlowInfo{
		Src: netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort),
	}, "udp")
	return true
}

func addrFrom(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// DialGuest opens a TCP connection from the gateway to the guest's port, for
// ports the host publishes. The connection never passes the FlowHandler:
// it is inbound. The caller closes it; Close also ends it.
func (s *Stack) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.mu.Unlock()
	dst := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(s.cfg.GuestIP.As4()), Port: port}
	conn, err := gonet.DialContextTCP(ctx, s.stack, dst, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("connect to the sandbox's port %d: %w", port, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		conn.Close()
		return nil, ErrClosed
	}
	s.conns[conn] = struct{}{}
	return &trackedConn{Conn: conn, s: s}, nil
}

// trackedConn removes itself from the Stack's set when closed.
type trackedConn struct {
	net.Conn
	s    *Stack
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c.Conn)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}
