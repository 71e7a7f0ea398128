package policy

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseResource(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
		kind Kind
	}{
		{"example.com", "example.com", KindHost},
		{"Example.COM.", "example.com", KindHost},
		{" example.com ", "example.com", KindHost},
		{"*.example.com", "*.example.com", KindOneLabel},
		{"**.Example.com", "**.example.com", KindAnyDepth},
		{"**", "**", KindAllHosts},
		{"**:22", "**:22", KindAllHosts},
		{"example.com:443", "example.com:443", KindHost},
		{"*.example.com:8080", "*.example.com:8080", KindOneLabel},
		{"intranet", "intranet", KindHost},
		{"_acme.example.com", "_acme.example.com", KindHost},
		{"10.0.0.0/8", "10.0.0.0/8", KindCIDR},
		{"10.1.2.3/8", "10.0.0.0/8", KindCIDR},
		{"2001:DB8::/32", "2001:db8::/32", KindCIDR},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8", KindCIDR},
		{"1.2.3.4", "1.2.3.4", KindIP},
		{"1.2.3.4:22", "1.2.3.4:22", KindIP},
		{"2001:db8::1", "2001:db8::1", KindIP},
		{"[2001:db8::1]", "2001:db8::1", KindIP},
		{"[2001:DB8::1]:5432", "[2001:db8::1]:5432", KindIP},
		{"::ffff:1.2.3.4", "1.2.3.4", KindIP},
		{"localhost:8080", "localhost:8080", KindLocalhost},
		{"LOCALHOST:8080", "localhost:8080", KindLocalhost},
	} {
		r, err := ParseResource(c.in)
		if err != nil {
			t.Errorf("ParseResource(%q): %v", c.in, err)
			continue
		}
		if r.String() != c.want || r.Kind != c.kind {
			t.Errorf("ParseResource(%q) = %q (%v), want %q (%v)", c.in, r.String(), r.Kind, c.want, c.kind)
		}
		again, err := ParseResource(r.String())
		if err != nil || again != r {
			t.Errorf("ParseResource(%q) does not round trip: %v %v", r.String(), again, err)
		}
	}
}

func TestParseResourceErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "empty"},
		{"https://example.com/x", "is a URL"},
		{"exa mple.com", "contains a space"},
		{"ex..com", "empty label"},
		{".example.com", "empty label"},
		{"foo.*.com", "only as the first label"},
		{"***.example.com", "only as the first label"},
		{"*", "use ** for all hosts"},
		{"example.com:0", "outside 1-65535"},
		{"example.com:65536", "outside 1-65535"},
		{"example.com:http", "not a number"},
		{"example.com:", "empty port"},
		{"localhost", "localhost needs a port"},
		{"foo.localhost:80", "use localhost:PORT"},
		{"2001:db8::1:22:x", "IPv6"},
		{"[2001:db8::1]:0", "port 0"},
		{"[nope]:22", "[IPv6]:port"},
		{"10.0.0.0/33", "not a valid CIDR"},
		{"1.2.3", "looks like an IP"},
		{"-bad.com", "hyphen"},
		{"ex!ample.com", "character"},
		{"fe80::1%eth0", "zones"},
	} {
		_, err := ParseResource(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "resource ") {
			t.Errorf("ParseResource(%q) = %v, want an error containing %q", c.in, err, c.want)
		}
	}
}

func TestParseResources(t *testing.T) {
	rs, err := ParseResources("a.com, *.b.com,,10.0.0.0/8")
	if err != nil || len(rs) != 3 {
		t.Fatalf("ParseResources = %v, %v", rs, err)
	}
	_, err = ParseResources("a.com,bad..com,*")
	if err == nil || !strings.Contains(err.Error(), "bad..com") || !strings.Contains(err.Error(), `"*"`) {
		t.Errorf("ParseResources errors = %v", err)
	}
	if _, err := ParseResources(" , "); err == nil {
		t.Error("empty list accepted")
	}
}

func FuzzParseResource(f *testing.F) {
	for _, s := range []string{
		"example.com", "*.example.com", "**.example.com", "**", "example.com:443", "10.0.0.0/8",
		"2001:db8::/32", "1.2.3.4:22", "[::1]:22", "localhost:8080", "::ffff:1.2.3.4", "a..b",
		"*.*", "[fe80::1%eth0]:1", "xn--bcher-kva.example", "EXAMPLE.com.", "1.2.3", ":80", "[]:1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseResource(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "resource ") {
				t.Fatalf("error does not name the resource: %v", err)
			}
			return
		}
		again, err := ParseResource(r.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", r.String(), s, err)
		}
		if again != r {
			t.Fatalf("round trip of %q: %+v != %+v", s, again, r)
		}
		// Matching never panics and a host pattern never covers loopback.
		set, err := Compile(File{Default: PresetDenyAll, Rules: []Rule{NewRule(Allow, r, "", "", time.Time{})}})
		if err != nil {
			t.Fatal(err)
		}
		d := set.Evaluate(Request{Host: "x.example.com", IP: netip.MustParseAddr("127.0.0.1"), Port: 80})
		if d.Allow && r.IsHostPattern() {
			t.Fatalf("host pattern %q allows loopback", r)
		}
	})
}

func rules(t *testing.T, specs ...string) []Rule {
	t.Helper()
	var out []Rule
	for _, s := range specs {
		action, rest, _ := strings.Cut(s, " ")
		scope := ""
		if res, sc, ok := strings.Cut(rest, " @"); ok {
			rest, scope = res, sc
		}
		r, err := ParseResource(rest)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, NewRule(Action(action), r, scope, "", time.Time{}))
	}
	return out
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestEvaluate(t *testing.T) {
	hostOwn := []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}
	type tc struct {
		name  string
		def   Preset
		rules []string
		req   Request
		allow bool
		rule  string // resource of the deciding rule, "" for the default
	}
	for _, c := range []tc{
		// Exact.
		{"exact", PresetDenyAll, []string{"allow example.com"}, Request{Host: "example.com", Port: 443}, true, "example.com"},
		{"exact case and dot", PresetDenyAll, []string{"allow example.com"}, Request{Host: "EXAMPLE.com.", Port: 443}, true, "example.com"},
		{"exact not sub", PresetDenyAll, []string{"allow example.com"}, Request{Host: "a.example.com", Port: 443}, false, ""},
		// One label.
		{"one label", PresetDenyAll, []string{"allow *.example.com"}, Request{Host: "a.example.com"}, true, "*.example.com"},
		{"one label not two", PresetDenyAll, []string{"allow *.example.com"}, Request{Host: "a.b.example.com"}, false, ""},
		{"one label not apex", PresetDenyAll, []string{"allow *.example.com"}, Request{Host: "example.com"}, false, ""},
		{"one label not lookalike", PresetDenyAll, []string{"allow *.example.com"}, Request{Host: "aexample.com"}, false, ""},
		// Any depth.
		{"any depth 1", PresetDenyAll, []string{"allow **.example.com"}, Request{Host: "a.example.com"}, true, "**.example.com"},
		{"any depth 3", PresetDenyAll, []string{"allow **.example.com"}, Request{Host: "a.b.c.example.com"}, true, "**.example.com"},
		{"any depth not apex", PresetDenyAll, []string{"allow **.example.com"}, Request{Host: "example.com"}, false, ""},
		{"any depth not lookalike", PresetDenyAll, []string{"allow **.example.com"}, Request{Host: "evilexample.com"}, false, ""},
		{"all hosts", PresetDenyAll, []string{"allow **"}, Request{Host: "anything.at.all", IP: ip("93.184.216.34"), Port: 443}, true, "**"},
		// ** never covers special addresses.
		{"** not loopback", PresetDenyAll, []string{"allow **"}, Request{Host: "x.com", IP: ip("127.0.0.1"), Port: 80}, false, ""},
		{"** not loopback literal", PresetDenyAll, []string{"allow **"}, Request{Host: "127.0.0.1", Port: 80}, false, ""},
		{"** not localhost name", PresetDenyAll, []string{"allow **"}, Request{Host: "localhost", Port: 80}, false, ""},
		{"** not host.sbx.internal", PresetDenyAll, []string{"allow **"}, Request{Host: "host.sbx.internal", Port: 80}, false, ""},
		{"** not rfc1918", PresetDenyAll, []string{"allow **"}, Request{Host: "x.com", IP: ip("192.168.1.1")}, false, ""},
		{"** not cgnat", PresetDenyAll, []string{"allow **"}, Request{IP: ip("100.64.1.1")}, false, ""},
		{"** not metadata", PresetDenyAll, []string{"allow **"}, Request{Host: "metadata.google.internal", IP: ip("169.254.169.254"), Port: 80}, false, ""},
		{"** not ula", PresetDenyAll, []string{"allow **"}, Request{Host: "x.com", IP: ip("fd12::1")}, false, ""},
		{"** not v6 link-local", PresetDenyAll, []string{"allow **"}, Request{Host: "x.com", IP: ip("fe80::1")}, false, ""},
		{"** not v6 loopback", PresetDenyAll, []string{"allow **"}, Request{Host: "x.com", IP: ip("::1")}, false, ""},
		{"** not mapped loopback", PresetDenyAll, []string{"allow **"}, Request{Host: "x.com", IP: ip("::ffff:127.0.0.1")}, false, ""},
		{"** not unspecified", PresetDenyAll, []string{"allow **"}, Request{Host: "x.com", IP: ip("0.0.0.0")}, false, ""},
		{"** not multicast", PresetDenyAll, []string{"allow **"}, Request{Host: "x.com", IP: ip("224.0.0.1")}, false, ""},
		{"** not host own", PresetDenyAll, []string{"allow **"}, Request{Host: "myhost", IP: ip("203.0.113.7")}, false, ""},
		{"exact not private", PresetDenyAll, []string{"allow example.com"}, Request{Host: "example.com", IP: ip("10.1.1.1")}, false, ""},
		// Presets never allow special addresses.
		{"allow-all not loopback", PresetAllowAll, nil, Request{IP: ip("127.0.0.1"), Port: 22}, false, ""},
		{"allow-all not private", PresetAllowAll, nil, Request{Host: "x.com", IP: ip("10.0.0.1")}, false, ""},
		{"allow-all not host own", PresetAllowAll, nil, Request{IP: ip("203.0.113.7")}, false, ""},
		// Naming a special address does allow it.
		{"ip names private", PresetDenyAll, []string{"allow 10.0.0.5"}, Request{IP: ip("10.0.0.5"), Port: 5432}, true, "10.0.0.5"},
		{"cidr contains private", PresetDenyAll, []string{"allow 10.0.0.0/8"}, Request{Host: "db.internal", IP: ip("10.2.3.4"), Port: 5432}, true, "10.0.0.0/8"},
		{"localhost port", PresetDenyAll, []string{"allow localhost:8080"}, Request{Host: "host.sbx.internal", Port: 8080}, true, "localhost:8080"},
		{"localhost port by ip", PresetDenyAll, []string{"allow localhost:8080"}, Request{IP: ip("127.0.0.1"), Port: 8080}, true, "localhost:8080"},
		{"localhost port v6", PresetDenyAll, []string{"allow localhost:8080"}, Request{IP: ip("::1"), Port: 8080}, true, "localhost:8080"},
		{"localhost other port", PresetDenyAll, []string{"allow localhost:8080"}, Request{IP: ip("127.0.0.1"), Port: 8081}, false, ""},
		{"localhost not private", PresetDenyAll, []string{"allow localhost:8080"}, Request{IP: ip("10.0.0.1"), Port: 8080}, false, ""},
		{"host own named", PresetDenyAll, []string{"allow 203.0.113.7:2375"}, Request{IP: ip("203.0.113.7"), Port: 2375}, true, "203.0.113.7:2375"},
		// Ports.
		{"host port match", PresetDenyAll, []string{"allow example.com:22"}, Request{Host: "example.com", Port: 22}, true, "example.com:22"},
		{"host port other", PresetDenyAll, []string{"allow example.com:22"}, Request{Host: "example.com", Port: 443}, false, ""},
		{"host port unknown", PresetDenyAll, []string{"allow example.com:22"}, Request{Host: "example.com"}, false, ""},
		{"bare host any port", PresetDenyAll, []string{"allow example.com"}, Request{Host: "example.com", Port: 5432}, true, "example.com"},
		{"ip port", PresetDenyAll, []string{"allow 93.184.216.34:22"}, Request{IP: ip("93.184.216.34"), Port: 22}, true, "93.184.216.34:22"},
		{"ip port other", PresetDenyAll, []string{"allow 93.184.216.34:22"}, Request{IP: ip("93.184.216.34"), Port: 23}, false, ""},
		{"bare ip any port", PresetDenyAll, []string{"allow 93.184.216.34"}, Request{IP: ip("93.184.216.34"), Port: 9999}, true, "93.184.216.34"},
		// CIDR and IPv6 literal forms.
		{"cidr v4", PresetDenyAll, []string{"allow 93.184.0.0/16"}, Request{IP: ip("93.184.216.34")}, true, "93.184.0.0/16"},
		{"cidr v4 outside", PresetDenyAll, []string{"allow 93.184.0.0/16"}, Request{IP: ip("93.185.0.1")}, false, ""},
		{"cidr v6", PresetDenyAll, []string{"allow 2606:2800::/32"}, Request{IP: ip("2606:2800:220:1::1")}, true, "2606:2800::/32"},
		{"cidr v6 outside", PresetDenyAll, []string{"allow 2606:2800::/32"}, Request{IP: ip("2606:2801::1")}, false, ""},
		{"v6 literal host", PresetDenyAll, []string{"allow 2606:2800::1"}, Request{Host: "[2606:2800::1]", Port: 443}, true, "2606:2800::1"},
		{"v6 port rule", PresetDenyAll, []string{"allow [2606:2800::1]:22"}, Request{IP: ip("2606:2800::1"), Port: 22}, true, "[2606:2800::1]:22"},
		{"v4 rule mapped request", PresetDenyAll, []string{"allow 93.184.216.34"}, Request{IP: ip("::ffff:93.184.216.34")}, true, "93.184.216.34"},
		{"v4 cidr not v6", PresetDenyAll, []string{"allow 0.0.0.0/0"}, Request{IP: ip("2606:2800::1")}, false, ""},
		// Deny wins over a more specific allow, across name and address.
		{"deny wins specific", PresetAllowAll, []string{"allow api.evil.com:443", "deny **.evil.com"}, Request{Host: "api.evil.com", Port: 443}, false, "**.evil.com"},
		{"deny wins order", PresetAllowAll, []string{"deny **.evil.com", "allow api.evil.com"}, Request{Host: "api.evil.com"}, false, "**.evil.com"},
		{"deny ip over host allow", PresetDenyAll, []string{"allow good.com", "deny 93.184.0.0/16"}, Request{Host: "good.com", IP: ip("93.184.216.34")}, false, "93.184.0.0/16"},
		{"deny host over ip allow", PresetDenyAll, []string{"allow 93.184.216.34", "deny good.com"}, Request{Host: "good.com", IP: ip("93.184.216.34")}, false, "good.com"},
		{"deny host covers special", PresetDenyAll, []string{"allow 10.0.0.0/8", "deny db.example.com"}, Request{Host: "db.example.com", IP: ip("10.0.0.1")}, false, "db.example.com"},
		{"deny ** all", PresetAllowAll, []string{"deny **", "allow example.com"}, Request{Host: "example.com"}, false, "**"},
		// Allow punches a hole in deny-all.
		{"hole in deny-all", PresetDenyAll, []string{"allow registry.npmjs.org"}, Request{Host: "registry.npmjs.org", Port: 443}, true, "registry.npmjs.org"},
		{"deny-all default", PresetDenyAll, nil, Request{Host: "example.com", Port: 443}, false, ""},
		{"allow-all default", PresetAllowAll, nil, Request{Host: "example.com", IP: ip("93.184.216.34"), Port: 443}, true, ""},
		// Balanced.
		{"balanced api", PresetBalanced, nil, Request{Host: "api.anthropic.com", Port: 443}, true, ""},
		{"balanced raw", PresetBalanced, nil, Request{Host: "raw.githubusercontent.com", Port: 443}, true, ""},
		{"balanced other", PresetBalanced, nil, Request{Host: "example.com", Port: 443}, false, ""},
		{"balanced no npm", PresetBalanced, nil, Request{Host: "registry.npmjs.org", Port: 443}, false, ""},
		{"balanced no pypi", PresetBalanced, nil, Request{Host: "pypi.org", Port: 443}, false, ""},
		{"balanced not ip", PresetBalanced, nil, Request{IP: ip("93.184.216.34"), Port: 443}, false, ""},
		{"balanced not private", PresetBalanced, nil, Request{Host: "api.anthropic.com", IP: ip("10.0.0.1"), Port: 443}, false, ""},
		{"balanced deny rule wins", PresetBalanced, []string{"deny github.com"}, Request{Host: "github.com", Port: 443}, false, "github.com"},
		{"unset is balanced", PresetUnset, nil, Request{Host: "api.openai.com", Port: 443}, true, ""},
		// Sandbox rules add to global ones.
		{"sandbox rule own", PresetDenyAll, []string{"allow example.com @sb1"}, Request{Host: "example.com", Sandbox: "sb1"}, true, "example.com"},
		{"sandbox rule other", PresetDenyAll, []string{"allow example.com @sb1"}, Request{Host: "example.com", Sandbox: "sb2"}, false, ""},
		{"sandbox rule no sandbox", PresetDenyAll, []string{"allow example.com @sb1"}, Request{Host: "example.com"}, false, ""},
		{"global applies to sandbox", PresetDenyAll, []string{"allow example.com"}, Request{Host: "example.com", Sandbox: "sb1"}, true, "example.com"},
		{"sandbox deny beats global allow", PresetDenyAll, []string{"allow example.com", "deny example.com @sb1"}, Request{Host: "example.com", Sandbox: "sb1"}, false, "example.com"},
		{"global deny beats sandbox allow", PresetDenyAll, []string{"deny example.com", "allow example.com @sb1"}, Request{Host: "example.com", Sandbox: "sb1"}, false, "example.com"},
	} {
		t.Run(c.name, func(t *testing.T) {
			set, err := Compile(File{Default: c.def, Rules: rules(t, c.rules...)}, hostOwn...)
			if err != nil {
				t.Fatal(err)
			}
			d := set.Evaluate(c.req)
			got := ""
			if d.Rule != nil {
				got = d.Rule.Resource
			}
			if d.Allow != c.allow || got != c.rule {
				t.Errorf("Evaluate(%v) = allow %v rule %q (%s), want allow %v rule %q", c.req, d.Allow, got, d.Reason, c.allow, c.rule)
			}
			if d.Reason == "" {
				t.Error("empty reason")
			}
		})
	}
}

func TestReasons(t *testing.T) {
	set, err := Compile(File{Default: PresetBalanced, Rules: rules(t, "deny **.evil.com")})
	if err != nil {
		t.Fatal(err)
	}
	id := RuleID(Deny, Resource{Kind: KindAnyDepth, Host: "evil.com"}, "")
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{Host: "a.evil.com"}, "denied by rule deny **.evil.com (id " + id + ")"},
		{Request{Host: "example.com"}, "no rule matches; default balanced denies"},
		{Request{Host: "api.github.com"}, "no rule matches; default balanced allows it (built-in api.github.com)"},
	} {
		if got := set.Evaluate(c.req).Reason; got != c.want {
			t.Errorf("Reason(%v) = %q, want %q", c.req, got, c.want)
		}
	}
}

func TestMalformedSetDenies(t *testing.T) {
	f := File{Default: PresetAllowAll, Rules: []Rule{
		{ID: "a", Action: Allow, Resource: "example.com"},
		{ID: "b", Action: "maybe", Resource: "x..com"},
		{ID: "a", Action: Allow, Resource: "y.com"},
	}}
	set, err := Compile(f)
	if err == nil {
		t.Fatal("Compile accepted a malformed file")
	}
	for _, want := range []string{`rules[1].action "maybe"`, `rules[1].resource "x..com"`, `rules[2].id "a" is used twice`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	d := set.Evaluate(Request{Host: "example.com", Port: 443})
	if d.Allow || !strings.Contains(d.Reason, "malformed") || !errors.Is(set.Err(), set.Err()) {
		t.Errorf("malformed set decided %+v", d)
	}
	var nilSet *Set
	if nilSet.Evaluate(Request{Host: "example.com"}).Allow {
		t.Error("nil set allowed")
	}
	if _, err := Compile(File{Version: 2}); err == nil {
		t.Error("version 2 accepted")
	}
	if _, err := Compile(File{Default: "open"}); err == nil {
		t.Error("unknown default accepted")
	}
}

func TestBalancedList(t *testing.T) {
	if len(balancedResources) != len(Balanced) {
		t.Fatalf("%d of %d balanced entries parse", len(balancedResources), len(Balanced))
	}
	banned := []string{"npmjs", "pypi", "pythonhosted", "crates.io", "proxy.golang.org", "debian", "ubuntu", "rubygems", "maven", "nuget", "yarnpkg", "alpinelinux"}
	for _, b := range Balanced {
		for _, bad := range banned {
			if strings.Contains(b.Resource, bad) {
				t.Errorf("balanced lists package registry %s", b.Resource)
			}
		}
	}
	for _, b := range balancedResources {
		if !b.res.IsHostPattern() || b.res.Kind == KindAllHosts {
			t.Errorf("balanced entry %s is not a narrow host pattern", b.entry.Resource)
		}
	}
}

func TestRuleID(t *testing.T) {
	r, _ := ParseResource("Example.com")
	a := NewRule(Allow, r, "", "", time.Time{})
	b := NewRule(Allow, r, "", "agent:claude", time.Now())
	if a.ID != b.ID || len(a.ID) != 8 {
		t.Errorf("ids %q %q", a.ID, b.ID)
	}
	if a.Origin != OriginUser || b.Origin != "agent:claude" {
		t.Errorf("origins %q %q", a.Origin, b.Origin)
	}
	if diff := cmp.Diff(a.ID, NewRule(Deny, r, "", "", time.Time{}).ID); diff == "" {
		t.Error("allow and deny share an id")
	}
	if a.ID == NewRule(Allow, r, "sb1", "", time.Time{}).ID {
		t.Error("global and sandbox rule share an id")
	}
}

// TestBalancedDocs: docs/policy.md lists exactly the balanced entries.
func TestBalancedDocs(t *testing.T) {
	data, err := os.ReadFile("../../docs/policy.md")
	if err != nil {
		t.Skipf("docs not found: %v", err)
	}
	_, table, _ := strings.Cut(string(data), "## The balanced list")
	table, _, _ = strings.Cut(table, "## File format")
	var documented []string
	for line := range strings.SplitSeq(table, "\n") {
		if rest, ok := strings.CutPrefix(line, "| `"); ok {
			res, _, _ := strings.Cut(rest, "`")
			documented = append(documented, res)
		}
	}
	var want []string
	for _, b := range Balanced {
		want = append(want, b.Resource)
	}
	if diff := cmp.Diff(want, documented); diff != "" {
		t.Errorf("docs/policy.md balanced list differs from Balanced (-code +docs):\n%s", diff)
	}
}

func TestMayAllowName(t *testing.T) {
	f := File{Version: 1, Default: PresetDenyAll}
	for _, r := range []struct {
		a   Action
		res string
	}{{Allow, "db.example.com:5432"}, {Allow, "**.ok.test"}, {Deny, "bad.ok.test"}} {
		res, err := ParseResource(r.res)
		if err != nil {
			t.Fatal(err)
		}
		f.Rules = append(f.Rules, NewRule(r.a, res, "", "user", time.Time{}))
	}
	s, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"db.example.com": true, "a.ok.test": true, "bad.ok.test": false, "other.test": false, "localhost": false,
	} {
		if got := s.MayAllowName(name, ""); got != want {
			t.Errorf("MayAllowName(%q) = %v, want %v", name, got, want)
		}
	}
	if DenyAll(nil).MayAllowName("x.test", "") {
		t.Error("a deny-all set may allow a name")
	}
}

// A name the hosts override maps to a special address reaches it only on
// the port its rule names, or on 80 and 443 for a portless rule.
func TestEvaluateMapped(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	pub := netip.MustParseAddr("93.184.216.34")
	for _, c := range []struct {
		def   Preset
		rules []string
		host  string
		ip    netip.Addr
		port  uint16
		want  bool
	}{
		{PresetDenyAll, []string{"allow portless.test"}, "portless.test", lo, 443, true},
		{PresetDenyAll, []string{"allow portless.test"}, "portless.test", lo, 80, true},
		{PresetDenyAll, []string{"allow portless.test"}, "portless.test", lo, 2375, false},
		{PresetDenyAll, []string{"allow ported.test:2375"}, "ported.test", lo, 2375, true},
		{PresetDenyAll, []string{"allow ported.test:2375"}, "ported.test", lo, 443, false},
		{PresetDenyAll, []string{"allow ported.test:2375"}, "ported.test", lo, 2376, false},
		{PresetDenyAll, []string{"allow **"}, "any.test", lo, 22, false},
		// "**" names no host: it never opens a mapped name onto loopback.
		{PresetDenyAll, []string{"allow **:22"}, "any.test", lo, 22, false},
		{PresetDenyAll, []string{"allow any.test", "allow any.test:22"}, "any.test", lo, 22, true},
		{PresetDenyAll, []string{"allow any.test:22", "allow any.test"}, "any.test", lo, 22, true},
		{PresetAllowAll, nil, "any.test", lo, 2375, false},
		{PresetAllowAll, nil, "any.test", lo, 443, true},
		{PresetDenyAll, []string{"allow portless.test", "deny portless.test"}, "portless.test", lo, 443, false},
		{PresetDenyAll, []string{"allow portless.test", "deny 127.0.0.1"}, "portless.test", lo, 443, false},
		{PresetDenyAll, []string{"allow localhost:2375"}, "other.test", lo, 2375, true},
		{PresetDenyAll, []string{"allow 127.0.0.1:2375"}, "other.test", lo, 2375, true},
		{PresetDenyAll, nil, "other.test", lo, 443, false},
		{PresetDenyAll, []string{"allow portless.test"}, "portless.test", pub, 2375, true},
		{PresetDenyAll, []string{"allow portless.test"}, "portless.test", netip.MustParseAddr("10.1.2.3"), 22, false},
	} {
		set, err := Compile(File{Default: c.def, Rules: rules(t, c.rules...)})
		if err != nil {
			t.Fatal(err)
		}
		d := set.EvaluateMapped(Request{Host: c.host, IP: c.ip, Port: c.port})
		if d.Allow != c.want {
			t.Errorf("%s %v: %s %s port %d: allow=%v (%s), want %v", c.def, c.rules, c.host, c.ip, c.port, d.Allow, d.Reason, c.want)
		}
	}
}
