package policy

import (
	"net/netip"
	"testing"
	"time"
)

// Found by the third outside review; fails on the code before its fix.
// A zoned IPv6 literal is never special (netip.Prefix.Contains
// is false for any zoned address; IsUnspecified compares the zone) and
// escapes every IP/CIDR rule, deny rules included. "::%x" is dialled by the
// kernel as the host's loopback.
func TestZonedIPv6IsSpecial(t *testing.T) {
	res, err := ParseResource("2001:db8::/32")
	if err != nil {
		t.Fatal(err)
	}
	set, err := Compile(File{Version: 1, Default: PresetAllowAll,
		Rules: []Rule{NewRule(Deny, res, "", "", time.Now())}},
		netip.MustParsePrefix("2a01:4f8::5/128")) // stands for the host's own address
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"::%x",                 // unspecified: connect(2) reaches the host's loopback
		"2001:db8::1%x",        // documentation range, and the deny rule above
		"2a01:4f8::5%x",        // the host's own address
		"64:ff9b::a9fe:a9fe%x", // NAT64 of 169.254.169.254
		"2002:a9fe:a9fe::%x",   // 6to4 of 169.254.169.254
	} {
		a := netip.MustParseAddr(s)
		if d := set.Evaluate(Request{Host: s, Port: 22}); d.Allow {
			t.Errorf("%s: special=%v, allowed (%s)", s, set.IsSpecial(a), d.Reason)
		}
	}
}
