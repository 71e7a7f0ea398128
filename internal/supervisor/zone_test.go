package supervisor

import (
	"net/http"
	"net/netip"
	"testing"

	"github.com/sbx-dev/sbx/internal/policy"
)

// Found by the third outside review; fails on the code before its fix.
// An IPv6 literal with a zone ("[::%25x]") is not special to the
// policy: netip.Prefix.Contains is false for every zoned address and
// Addr.IsUnspecified compares the zone too, so "::%x" is neither
// unspecified nor in ::/96, and allow-all ("never local or private
// addresses") allows it. The proxy dials "[::%x]:PORT", which the kernel
// connects to the host's loopback (connect(2) to :: means loopback), so a
// guest reaches every service on the host's [::1]/[::] ports without any
// rule. The same zone hides documentation, NAT64, 6to4 and host addresses,
// and slips past every IP/CIDR deny rule.
func TestZonedIPv6NeverReachesHostLoopback(t *testing.T) {
	escape, hits := echoServer(t)
	// What the proxy would dial for "::%x": the test server stands for
	// the host's loopback, which the kernel connects [::%x] to.
	route := map[string]string{"[::%x]:2375": escape, "[::%25x]:2375": escape, "[2001:db8::1%x]:22": escape}
	f := newNetFixture(t, "", policy.PresetAllowAll, []string{"deny 2001:db8::/32"}, route)
	for _, c := range []struct{ line, host string }{
		{"GET http://[::%25x]:2375/ HTTP/1.1", "[::%25x]:2375"},
		{"CONNECT [::%25x]:2375 HTTP/1.1", "[::%25x]:2375"},
		{"GET http://[2001:db8::1%25x]:22/ HTTP/1.1", "[2001:db8::1%25x]:22"}, // deny rule and special range
	} {
		f.resetReached()
		before := hits()
		code := f.viaProxy(t, c.line, c.host)
		if code == http.StatusOK || len(f.reachedAny()) > 0 {
			t.Errorf("%s: answered %d; host side reached %v (%d requests)", c.line, code, f.reachedAny(), hits()-before)
		}
	}
	// Transparent port 80: the Host header names the zoned literal.
	ip := netip.MustParseAddr("93.184.215.14") // any address: the Host header decides
	f.resetReached()
	if ok := f.direct(t, netip.AddrPortFrom(ip, 80), "[::%25x]:2375"); ok || len(f.reachedAny()) > 0 {
		t.Errorf("transparent Host [::%%25x]:2375: answered=%v; host side reached %v", ok, f.reachedAny())
	}
}
