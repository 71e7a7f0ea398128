package netstack

import (
	"container/list"
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

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

// Default bounds of a PolicyResolver.
const (
	DefaultMaxSynthetic      = 1 << 16
	DefaultSyntheticLifetime = 10 * time.Minute
	DefaultMaxNames          = 1 << 16
	DefaultMaxLookups        = 64
)

// PolicyResolver is the DNSHandler of a sandbox: it answers only names the
// policy may allow, through the supervisor's upstream resolver, hides
// non-public answers behind synthetic addresses, and remembers which name
// produced which address. Set the exported fields before first use and do
// not change them after; the zero value refuses every name but HostName.
// Its methods are safe for concurrent use.
//
// Everything it keeps is bounded, so no guest can make it grow without
// end: at most MaxSynthetic synthetic addresses (the least recently used
// one is given to a new name once it went unused for SyntheticLifetime;
// until then new names get SERVFAIL), about MaxNames remembered public
// addresses (the older half is forgotten first), and MaxLookups upstream
// lookups at a time (more get SERVFAIL at once). Limited hears each time a
// bound refused something.
type PolicyResolver struct {
	// Allowed reports whether the policy may allow some flow to name (the
	// port is not known yet). nil refuses every name.
	Allowed func(name string) bool
	// Lookup resolves name upstream (the hosts-file override included) to
	// addresses of both families. An error for which IsNotFound is true (a
	// *net.DNSError) gives NXDOMAIN; other errors give SERVFAIL.
	Lookup func(ctx context.Context, name string) ([]netip.Addr, error)

	// Bounds; zero means the Default above.
	MaxSynthetic      int
	SyntheticLifetime time.Duration
	MaxNames          int
	MaxLookups        int
	// Limited, if set, is called (synchronously, keep it short) with what
	// hit its bound: "synthetic addresses" or "dns lookups".
	Limited func(what string)
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	initOnce sync.Once
	lookups  chan struct{} // semaphore of upstream lookups

	mu sync.Mutex
	// synth maps (name, real address) to its entry; real maps the entry's
	// synthetic address back; lru orders entries, least recently used
	// first. All guarded by mu.
	synth map[synthKey]*list.Element
	real  map[netip.Addr]*list.Element
	lru   list.List
	// next is the offset in SyntheticRange of the next never-used synthetic
	// address; guarded by mu.
	next uint32
	// names and oldNames map an answered public address to the names that
	// produced it, most recent last: two generations, so the map stays
	// bounded and recent addresses survive; guarded by mu.
	names, oldNames map[netip.Addr][]string
}

type synthEntry struct {
	key  synthKey
	ip   netip.Addr
	used time.Time
}

func (r *PolicyResolver) init() {
	r.initOnce.Do(func() {
		if r.MaxSynthetic <= 0 {
			r.MaxSynthetic = DefaultMaxSynthetic
		}
		if r.SyntheticLifetime <= 0 {
			r.SyntheticLifetime = DefaultSyntheticLifetime
		}
		if r.MaxNames <= 0 {
			r.MaxNames = DefaultMaxNames
		}
		if r.MaxLookups <= 0 {
			r.MaxLookups = DefaultMaxLookups
		}
		if r.Now == nil {
			r.Now = time.Now
		}
		r.lookups = make(chan struct{}, r.MaxLookups)
	})
}

func (r *PolicyResolver) limited(what string) {
	if r.Limited != nil {
		r.Limited(what)
	}
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
	r.init()
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
	select {
	case r.lookups <- struct{}{}:
	default:
		r.limited("dns lookups")
		return nil, dns.RcodeServerFailure
	}
	addrs, err := r.Lookup(ctx, name)
	<-r.lookups
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
// and the name whose answer it was, and marks it used. ok is false for any
// address this resolver did not hand out (or has given to another name
// since).
func (r *PolicyResolver) RealAddr(synthetic netip.Addr) (real netip.Addr, name string, ok bool) {
	r.init()
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.real[synthetic.Unmap()]
	if !ok {
		return netip.Addr{}, "", false
	}
	r.touch(el)
	e := el.Value.(*synthEntry)
	return e.key.real, e.key.name, true
}

// NameFor returns the name whose answer most recently contained ip (a public
// or a synthetic address). ok is false when no answer contained it.
func (r *PolicyResolver) NameFor(ip netip.Addr) (name string, ok bool) {
	ns := r.NamesFor(ip)
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
	if el, ok := r.real[ip]; ok {
		return []string{el.Value.(*synthEntry).key.name}
	}
	if ns, ok := r.names[ip]; ok {
		return slices.Clone(ns)
	}
	return slices.Clone(r.oldNames[ip])
}

func (r *PolicyResolver) remember(ip netip.Addr, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names == nil {
		r.names = make(map[netip.Addr][]string)
	}
	ns, ok := r.names[ip]
	if !ok {
		ns = r.oldNames[ip]
		if len(r.names) >= max(r.MaxNames/2, 1) {
			// A new generation: the older one is forgotten.
			r.oldNames, r.names = r.names, make(map[netip.Addr][]string)
		}
	}
	ns = slices.DeleteFunc(slices.Clone(ns), func(n string) bool { return n == name })
	if len(ns) >= maxNamesPerAddr {
		ns = ns[len(ns)-maxNamesPerAddr+1:]
	}
	r.names[ip] = append(ns, name)
}

func (r *PolicyResolver) touch(el *list.Element) {
	el.Value.(*synthEntry).used = r.Now()
	r.lru.MoveToBack(el)
}

// synthetic returns the synthetic address for (name, real), allocating one
// the first time: a never-used one while there are, then the least
// recently used one once it went unused for SyntheticLifetime. ok is false
// when every address is in use.
func (r *PolicyResolver) synthetic(name string, real netip.Addr) (netip.Addr, bool) {
	r.init()
	r.mu.Lock()
	defer r.mu.Unlock()
	k := synthKey{name: name, real: real}
	if el, ok := r.synth[k]; ok {
		r.touch(el)
		return el.Value.(*synthEntry).ip, true
	}
	if r.synth == nil {
		r.synth = make(map[synthKey]*list.Element)
		r.real = make(map[netip.Addr]*list.Element)
	}
	size := uint32(1) << (32 - SyntheticRange.Bits())
	var ip netip.Addr
	// Skip the range's first address (198.18.0.0): some stacks treat a
	// network address specially.
	if r.lru.Len() < r.MaxSynthetic && r.next+1 < size {
		r.next++
		base := SyntheticRange.Addr().As4()
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		v += r.next
		ip = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	} else {
		oldest := r.lru.Front()
		if oldest == nil || r.Now().Sub(oldest.Value.(*synthEntry).used) < r.SyntheticLifetime {
			r.limited("synthetic addresses")
			return netip.Addr{}, false
		}
		e := r.lru.Remove(oldest).(*synthEntry)
		delete(r.synth, e.key)
		delete(r.real, e.ip)
		ip = e.ip
	}
	el := r.lru.PushBack(&synthEntry{key: k, ip: ip, used: r.Now()})
	r.synth[k] = el
	r.real[ip] = el
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
