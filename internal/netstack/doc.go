// Package netstack is the user-mode network of one sandbox. It lives in the
// supervisor and is the far end of the VM's only NIC: QEMU's `-netdev stream`
// connects to a socket the supervisor listens on, and every frame the guest
// sends lands in a gVisor network stack owned by a [Stack].
//
// The model, per packet the guest sends:
//
//   - ARP, and DHCP to the gateway, are answered by the stack (the DHCP server
//     hands out the one static lease, Config.GuestIP for Config.GuestMAC).
//   - TCP to a port bound on the gateway with [Stack.ListenTCP] (the forward
//     proxy on :3128) or to the DNS server on gateway:53 reaches that listener.
//   - Any other TCP SYN, to any address, is shown to [FlowHandler.TCP] with its
//     source and destination. The handler either rejects it (the guest sees a
//     reset) or accepts it and gets the guest's side as a net.Conn to serve,
//     typically by handing it to the transparent proxy or by splicing it to a
//     connection the supervisor dialled itself. This package has no policy and
//     dials nothing.
//   - UDP to gateway:53 goes to the DNS server, which asks a [DNSHandler]
//     (normally a [PolicyResolver]). Any other UDP is dropped and reported
//     through [FlowHandler.Dropped].
//   - ICMP is dropped before gVisor sees it (gVisor in promiscuous mode would
//     otherwise answer echo requests for any address itself) and reported.
//     IPv6 and other protocols are dropped.
//
// The network pieces (link endpoint, switch with QEMU framing, DHCP server,
// address pool) come from github.com/containers/gvisor-tap-vsock; its
// forwarders, which dial the real destination directly, are never installed.
// docs/netstack.md has the steering table and the DNS behaviour.
package netstack
