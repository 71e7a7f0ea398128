package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
)

func testResolver(lookups *int) *PolicyResolver {
	upstream := map[string][]netip.Addr{
		"api.example.com":  {netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("2606:2800::1")},
		"cdn.example.com":  {netip.MustParseAddr("93.184.216.34")},
		"db.test":          {netip.MustParseAddr("127.0.0.1")},
		"mixed.test":       {netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("::1")},
		"metadata.test":    {netip.MustParseAddr("169.254.169.254")},
		"sneaky.test":      {netip.MustParseAddr("198.18.0.1")},
		"servfail.example": nil,
	}
	return &PolicyResolver{
		Allowed: func(name string) bool { return name != "denied.example" },
		Lookup: func(_ context.Context, name string) ([]netip.Addr, error) {
			*lookups++
			if name == "servfail.example" {
				return nil, errors.New("upstream timed out")
			}
			ips, ok := upstream[name]
			if !ok {
				return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
			}
			return ips, nil
		},
	}
}

func TestPolicyResolver(t *testing.T) {
	var lookups int
	r := testResolver(&lookups)
	ctx := t.Context()

	ips, rcode := r.Resolve(ctx, "denied.example", dns.TypeA)
	if rcode != dns.RcodeRefused || len(ips) != 0 || lookups != 0 {
		t.Errorf("denied: %v %s after %d lookups; want REFUSED without a lookup", ips, dns.RcodeToString[rcode], lookups)
	}
	if _, rcode := r.Resolve(ctx, "missing.example", dns.TypeA); rcode != dns.RcodeNameError {
		t.Errorf("missing: %s, want NXDOMAIN", dns.RcodeToString[rcode])
	}
	if _, rcode := r.Resolve(ctx, "servfail.example", dns.TypeA); rcode != dns.RcodeServerFailure {
		t.Errorf("upstream error: %s, want SERVFAIL", dns.RcodeToString[rcode])
	}

	ips, _ = r.Resolve(ctx, "api.example.com", dns.TypeA)
	if diff := cmp.Diff([]netip.Addr{netip.MustParseAddr("93.184.216.34")}, ips, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("A api.example.com (-want +got):\n%s", diff)
	}
	ips, _ = r.Resolve(ctx, "api.example.com", dns.TypeAAAA)
	if len(ips) != 1 || ips[0] != netip.MustParseAddr("2606:2800::1") {
		t.Errorf("AAAA api.example.com = %v", ips)
	}
	_, _ = r.Resolve(ctx, "cdn.example.com", dns.TypeA)
	if name, ok := r.NameFor(netip.MustParseAddr("93.184.216.34")); !ok || name != "cdn.example.com" {
		t.Errorf("NameFor = %q, %v; want the most recent name", name, ok)
	}
	if got := r.NamesFor(netip.MustParseAddr("93.184.216.34")); !cmp.Equal(got, []string{"api.example.com", "cdn.example.com"}) {
		t.Errorf("NamesFor = %v", got)
	}
	if _, ok := r.NameFor(netip.MustParseAddr("8.8.8.8")); ok {
		t.Error("NameFor an address never answered: ok")
	}
}

func TestPolicyResolverSynthetic(t *testing.T) {
	var lookups int
	r := testResolver(&lookups)
	ctx := t.Context()

	cases := []struct {
		name string
		real netip.Addr
	}{
		{"db.test", netip.MustParseAddr("127.0.0.1")},
		{"metadata.test", netip.MustParseAddr("169.254.169.254")},
		{"sneaky.test", netip.MustParseAddr("198.18.0.1")},
		{HostName, netip.MustParseAddr("127.0.0.1")},
	}
	seen := map[netip.Addr]bool{}
	for _, c := range cases {
		ips, rcode := r.Resolve(ctx, c.name, dns.TypeA)
		if rcode != dns.RcodeSuccess || len(ips) != 1 || !IsSynthetic(ips[0]) {
			t.Fatalf("A %s = %v %s; want one synthetic address", c.name, ips, dns.RcodeToString[rcode])
		}
		if seen[ips[0]] {
			t.Errorf("A %s = %s, already handed out for another name", c.name, ips[0])
		}
		seen[ips[0]] = true
		again, _ := r.Resolve(ctx, c.name, dns.TypeA)
		if again[0] != ips[0] {
			t.Errorf("A %s not stable: %s then %s", c.name, ips[0], again[0])
		}
		real, name, ok := r.RealAddr(ips[0])
		if !ok || real != c.real || name != c.name {
			t.Errorf("RealAddr(%s) = %s, %q, %v; want %s, %q", ips[0], real, name, ok, c.real, c.name)
		}
		if n, ok := r.NameFor(ips[0]); !ok || n != c.name {
			t.Errorf("NameFor(%s) = %q, %v", ips[0], n, ok)
		}
		if aaaa, rcode := r.Resolve(ctx, c.name, dns.TypeAAAA); len(aaaa) != 0 || rcode != dns.RcodeSuccess {
			t.Errorf("AAAA %s = %v %s; want empty NOERROR", c.name, aaaa, dns.RcodeToString[rcode])
		}
	}

	// Private and loopback answers of both families become synthetic; public ones stay.
	ips, _ := r.Resolve(ctx, "mixed.test", dns.TypeA)
	if len(ips) != 3 || !IsSynthetic(ips[0]) || ips[1] != netip.MustParseAddr("1.1.1.1") || !IsSynthetic(ips[2]) {
		t.Fatalf("A mixed.test = %v", ips)
	}
	if real, _, _ := r.RealAddr(ips[2]); real != netip.IPv6Loopback() {
		t.Errorf("RealAddr(%s) = %s, want ::1", ips[2], real)
	}
	if _, _, ok := r.RealAddr(netip.MustParseAddr("198.19.255.254")); ok {
		t.Error("RealAddr of an address never handed out: ok")
	}
	// host.sbx.internal resolves without asking the policy or upstream.
	before := lookups
	zero := &PolicyResolver{}
	if ips, rcode := zero.Resolve(ctx, HostName, dns.TypeA); rcode != dns.RcodeSuccess || len(ips) != 1 {
		t.Errorf("zero resolver, A %s = %v %s", HostName, ips, dns.RcodeToString[rcode])
	}
	if _, rcode := zero.Resolve(ctx, "api.example.com", dns.TypeA); rcode != dns.RcodeRefused {
		t.Errorf("zero resolver: %s, want REFUSED", dns.RcodeToString[rcode])
	}
	if lookups != before {
		t.Error("zero resolver looked a name up")
	}
}

// TestPolicyResolverThroughStack checks a synthetic answer reaches the guest
// over the DNS server and that a flow to it carries the synthetic address
// the supervisor maps back.
func TestPolicyResolverThroughStack(t *testing.T) {
	var lookups int
	r := testResolver(&lookups)
	flows := make(chan FlowInfo, 1)
	n := newTestNet(t, Config{DNS: r}, func(_ context.Context, f FlowInfo) TCPAction {
		flows <- f
		return Reject()
	})
	c, err := n.g.dialUDP(netip.AddrPortFrom(DefaultGateway, DNSPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dc := &dns.Conn{Conn: c}
	m := new(dns.Msg)
	m.SetQuestion("db.test.", dns.TypeA)
	if err := dc.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	reply, err := dc.ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	if len(reply.Answer) != 1 {
		t.Fatalf("answers = %v", reply.Answer)
	}
	a := reply.Answer[0].(*dns.A)
	synth, _ := netip.AddrFromSlice(a.A.To4())
	if !IsSynthetic(synth) {
		t.Fatalf("db.test answered %s, want a synthetic address", synth)
	}
	conn, err := n.g.dialTCP(t.Context(), netip.AddrPortFrom(synth, 5432))
	if err == nil {
		conn.Close()
	}
	f := <-flows
	real, name, ok := r.RealAddr(f.Dst.Addr())
	if !ok || real != netip.MustParseAddr("127.0.0.1") || name != "db.test" {
		t.Errorf("flow to %s maps back to %s %q %v", f.Dst, real, name, ok)
	}
}

// Gap 8 of the isolation review: after ~131k distinct names every
// non-public answer failed for good. Now synthetic addresses are recycled
// (least recently used, once unused for the lifetime), remembered public
// addresses and concurrent lookups are bounded, and each refusal is told.
func TestPolicyResolverBounds(t *testing.T) {
	now := time.Unix(1e9, 0)
	var limited []string
	block := make(chan struct{})
	r := &PolicyResolver{
		Allowed: func(string) bool { return true },
		Lookup: func(_ context.Context, name string) ([]netip.Addr, error) {
			if name == "slow.test" {
				<-block
			}
			if strings.HasPrefix(name, "pub") {
				return []netip.Addr{netip.MustParseAddr("93.184.216." + strings.TrimPrefix(name, "pub"))}, nil
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		},
		MaxSynthetic: 3, SyntheticLifetime: time.Minute, MaxNames: 4, MaxLookups: 1,
		Limited: func(what string) { limited = append(limited, what) },
		Now:     func() time.Time { return now },
	}
	ctx := t.Context()
	a := func(name string) (netip.Addr, int) {
		ips, rc := r.Resolve(ctx, name, dns.TypeA)
		if len(ips) == 0 {
			return netip.Addr{}, rc
		}
		return ips[0], rc
	}
	ipA, _ := a("a.test")
	ipB, _ := a("b.test")
	if _, rc := a("c.test"); rc != dns.RcodeSuccess {
		t.Fatal("c.test refused under the bound")
	}
	if _, rc := a("d.test"); rc != dns.RcodeServerFailure || len(limited) != 1 || limited[0] != "synthetic addresses" {
		t.Fatalf("over the bound within the lifetime: rcode %s, limited %v", dns.RcodeToString[rc], limited)
	}
	now = now.Add(2 * time.Minute)
	r.RealAddr(ipA) // a.test is in use again: b.test is now the oldest
	ipD, rc := a("d.test")
	if rc != dns.RcodeSuccess || ipD != ipB {
		t.Fatalf("after the lifetime: d.test got %v (%s), want b.test's address %v", ipD, dns.RcodeToString[rc], ipB)
	}
	if _, name, ok := r.RealAddr(ipB); !ok || name != "d.test" {
		t.Errorf("the recycled address maps to %q, %v", name, ok)
	}
	if ip, _ := a("a.test"); ip != ipA {
		t.Errorf("a.test moved from %v to %v", ipA, ip)
	}
	// Public addresses remembered: two generations of at most MaxNames/2.
	for i := range 50 {
		a(fmt.Sprintf("pub%d", i))
	}
	if n := len(r.names) + len(r.oldNames); n > 4 {
		t.Errorf("%d public addresses remembered, want at most 4", n)
	}
	if name, ok := r.NameFor(netip.MustParseAddr("93.184.216.49")); !ok || name != "pub49" {
		t.Errorf("the latest public answer forgotten: %q %v", name, ok)
	}
	// Concurrent upstream lookups: one at a time here.
	done := make(chan int)
	go func() { _, rc := a("slow.test"); done <- rc }()
	for deadline := time.Now().Add(5 * time.Second); len(r.lookups) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("slow lookup never started")
		}
	}
	if _, rc := a("e.test"); rc != dns.RcodeServerFailure || limited[len(limited)-1] != "dns lookups" {
		t.Errorf("second concurrent lookup: %s, limited %v", dns.RcodeToString[rc], limited)
	}
	close(block)
	if rc := <-done; rc != dns.RcodeSuccess {
		t.Errorf("the slow lookup: %s", dns.RcodeToString[rc])
	}
}
