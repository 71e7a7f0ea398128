package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/miekg/dns"
)

// HostName is the name by which the guest reaches the host's loopback. It
// always resolves, to a synthetic address whose real address is 127.0.0.1;
// whether a flow to it is allowed is the FlowHandler's decision.
const HostName = "host.sbx.internal"

// SyntheticRange holds the addresses PolicyResolver answers with where the
// true answer must not reach the guest as is (loopback, private, link-local,
// the sandbox subnet, ...). It is the benchmarking range of RFC 2544, which no
// public host uses.
var SyntheticRange = netip.MustParsePrefix("198.18.0.0/15")

// maxNamesPerAddr bounds how many names NamesFor remembers per address.
const maxNamesPerAddr = 16

var hostLoopback = netip.MustParseAddr("127.0.0.1")

// PolicyResolver is the DNSHandler of a sandbox: it answers only names the
// policy may allow, through the supervisor's upstream resolver, hides
// non-public answers behind synthetic addresses, and remembers which name
// produced which address. Set Allowed and Lookup before first use and do not
// change them after; the zero value refuses every name but HostName. Its
// methods are safe for concurrent use.
type PolicyResolver struct {
	// Allowed reports whether the policy may allow some flow to name (the
	// port is not known yet). nil refuses every name.
	Allowed func(name string) bool
	// Lookup resolves name upstream (the hosts-file override included) to
	// addresses of both families. An error for which IsNotFound is true (a
	// *net.DNSError) gives NXDOMAIN; other errors give SERVFAIL.
	Lookup func(ctx context.Context, name string) ([]netip.Addr, error)

	mu sync.Mutex
	// synth maps (name, real address) to its synthetic address; guarded by mu.
	synth map[synthKey]netip.Addr
	// real maps a synthetic address back to its key; guarded by mu.
	real map[netip.Addr]synthKey
	// next is the offset in SyntheticRange of the next synthetic address;
	// guarded by mu.
	next uint32
	// names maps an answered address to the names that produced it, most
	// recent last; guarded by mu.
	names map[netip.Addr][]string
}

var _ DNSHandler = (*PolicyResolver)(nil)

type synthKey struct {
	name string
	real netip.Addr
}

// Resolve implements DNSHandler. Refused names get dns.RcodeRefused; A answers
// carry public IPv4 addresses as they are and a synthetic IPv4 address for
// every non-public address (of either family); AAAA answers carry only public
// IPv6 addresses.
func (r *PolicyResolver) Resolve(ctx context.Context, name string, qtype uint16) ([]netip.Addr, int) {
	if name == HostName {
		if qtype != dns.TypeA {
			return nil, dns.RcodeSuccess
		}
		ip, ok := r.synthetic(name, hostLoopback)
		if !ok {
			return nil, dns.RcodeServerFailure
		}
		return []netip.Addr{ip}, dns.RcodeSuccess
	}
	if r.Allowed == nil || r.Lookup == nil || !r.Allowed(name) {
		return nil, dns.RcodeRefused
	}
	addrs, err := r.Lookup(ctx, name)
	if err != nil {
		if dnsErr, ok := errors.AsType[*net.DNSError](err); ok && dnsErr.IsNotFound {
			return nil, dns.RcodeNameError
		}
		return nil, dns.RcodeServerFailure
	}
	var out []netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() {
			continue
		}
		var ip netip.Addr
		switch {
		case !isPublic(a):
			if qtype != dns.TypeA {
				continue
			}
			s, ok := r.synthetic(name, a)
			if !ok {
				return nil, dns.RcodeServerFailure
			}
			ip = s
		case qtype == dns.TypeA && a.Is4(), qtype == dns.TypeAAAA && a.Is6():
			ip = a
			r.remember(a, name)
		default:
			continue
		}
		if !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out, dns.RcodeSuccess
}

// RealAddr maps a synthetic address back to the real address it stands for
// and the name whose answer it was. ok is false for any address this
// resolver did not hand out.
func (r *PolicyResolver) RealAddr(synthetic netip.Addr) (real netip.Addr, name string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok := r.real[synthetic.Unmap()]
	return k.real, k.name, ok
}

// NameFor returns the name whose answer most recently contained ip (a public
// or a synthetic address). ok is false when no answer contained it.
func (r *PolicyResolver) NameFor(ip netip.Addr) (name string, ok bool) {
	ip = ip.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, ok := r.real[ip]; ok {
		return k.name, true
	}
	ns := r.names[ip]
	if len(ns) == 0 {
		return "", false
	}
	return ns[len(ns)-1], true
}

// NamesFor returns every name (up to 16, most recent last) whose answers
// contained ip: one address may serve many names (CDNs), and a rule may name
// any of them.
func (r *PolicyResolver) NamesFor(ip netip.Addr) []string {
	ip = ip.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, ok := r.real[ip]; ok {
		return []string{k.name}
	}
	return append([]string(nil), r.names[ip]...)
}

func (r *PolicyResolver) remember(ip netip.Addr, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names == nil {
		r.names = make(map[netip.Addr][]string)
	}
	ns := r.names[ip]
	for i, n := range ns {
		if n == name {
			ns = append(ns[:i], ns[i+1:]...)
			break
		}
	}
	if len(ns) == maxNamesPerAddr {
		ns = ns[1:]
	}
	r.names[ip] = append(ns, name)
}

// synthetic returns the synthetic address for (name, real), allocating one
// the first time. ok is false when SyntheticRange is used up.
func (r *PolicyResolver) synthetic(name string, real netip.Addr) (netip.Addr, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := synthKey{name: name, real: real}
	if ip, ok := r.synth[k]; ok {
		return ip, true
	}
	size := uint32(1) << (32 - SyntheticRange.Bits())
	// Skip the range's first address (198.18.0.0): some stacks treat a
	// network address specially.
	if r.next+1 >= size {
		return netip.Addr{}, false
	}
	r.next++
	base := SyntheticRange.Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += r.next
	ip := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	if r.synth == nil {
		r.synth = make(map[synthKey]netip.Addr)
		r.real = make(map[netip.Addr]synthKey)
	}
	r.synth[k] = ip
	r.real[ip] = k
	return ip, true
}

// IsSynthetic reports whether ip lies in SyntheticRange.
func IsSynthetic(ip netip.Addr) bool { return SyntheticRange.Contains(ip.Unmap()) }

// nonPublic lists ranges an answer must not hand the guest as is, beyond
// what netip.Addr's predicates cover.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),     // "this network"
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT, often a VPN's
	netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
	SyntheticRange,                         // ours: never pass one through
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),
}

// isPublic reports whether a may be handed to the guest as a DNS answer.
func isPublic(a netip.Addr) bool {
	if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}
