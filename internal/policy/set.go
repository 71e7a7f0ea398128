package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Request is one destination a sandbox wants to reach.
type Request struct {
	// Host is the name asked for; it may be empty. An IP literal here is
	// treated as IP when IP is not set.
	Host string
	// IP is the address the flow goes to; it may be invalid (not known,
	// for example a proxy deciding on a CONNECT name before resolving).
	IP netip.Addr
	// Port is the destination port; 0 means unknown, which port-specific
	// rules never match.
	Port uint16
	// Sandbox is the sandbox id; it selects the sandbox-scoped rules.
	Sandbox string
}

func (r Request) String() string {
	var s string
	switch {
	case r.Host != "" && r.IP.IsValid():
		s = r.Host + " (" + r.IP.String() + ")"
	case r.Host != "":
		s = r.Host
	case r.IP.IsValid():
		s = r.IP.String()
	default:
		s = "<nothing>"
	}
	if r.Port != 0 {
		s += fmt.Sprintf(" port %d", r.Port)
	}
	return s
}

// Decision is the answer for one Request.
type Decision struct {
	Allow bool
	// Rule is the rule that decided; nil when the default decided.
	Rule *Rule
	// Default is the effective preset of the set that decided.
	Default Preset
	// Builtin is the entry of the balanced list that allowed the request,
	// when that list decided.
	Builtin string
	// Reason says why, for people: "denied by rule deny **.evil.com (id
	// abc)" or "no rule matches; default balanced denies".
	Reason string
}

type compiledRule struct {
	rule Rule
	res  Resource
}

// Set is a compiled, immutable rule set. It is safe for concurrent use.
type Set struct {
	rules   []compiledRule
	def     Preset
	special []netip.Prefix
	err     error
}

// Compile checks f and builds its Set. hostAddrs are the host's own
// addresses (or networks), treated as special in addition to the fixed
// special ranges. On error the returned Set is still usable and denies
// everything; Err returns the same error.
func Compile(f File, hostAddrs ...netip.Prefix) (*Set, error) {
	f.applyDefaults()
	special := make([]netip.Prefix, 0, len(hostAddrs))
	for _, p := range hostAddrs {
		if p.IsValid() {
			special = append(special, netip.PrefixFrom(p.Addr().Unmap(), unmapBits(p)).Masked())
		}
	}
	rules, err := compileRules(&f)
	if err != nil {
		return DenyAll(err), err
	}
	return &Set{rules: rules, def: f.Default.Effective(), special: special}, nil
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return max(p.Bits()-96, 0)
	}
	return p.Bits()
}

// DenyAll returns a Set that denies every request, reporting err (which
// must not be nil) as the reason. It is what a malformed policy becomes.
func DenyAll(err error) *Set {
	return &Set{def: PresetDenyAll, err: err}
}

// Err is the error the set was compiled with; non-nil means it denies
// everything.
func (s *Set) Err() error { return s.err }

// Default is the effective default preset.
func (s *Set) Default() Preset { return s.def }

// fixedSpecial are the ranges no host pattern or preset ever covers, beyond
// what netip's predicates report.
var fixedSpecial = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),      // shared address space (CGNAT)
	netip.MustParsePrefix("169.254.0.0/16"),     // link-local, cloud metadata
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments
	netip.MustParsePrefix("240.0.0.0/4"),        // reserved, broadcast
	netip.MustParsePrefix("fc00::/7"),           // unique local
	netip.MustParsePrefix("fe80::/10"),          // link-local
	netip.MustParsePrefix("64:ff9b:1::/48"),     // local-use NAT64
	netip.MustParsePrefix("fd00:ec2::254/128"),  // AWS metadata over IPv6 (inside fc00::/7)
	netip.MustParsePrefix("169.254.169.254/32"), // metadata (inside link-local)
	netip.MustParsePrefix("198.18.0.0/15"),      // benchmarking; the sandbox resolver's synthetic range
	netip.MustParsePrefix("192.0.2.0/24"),       // documentation (TEST-NET-1)
	netip.MustParsePrefix("198.51.100.0/24"),    // documentation (TEST-NET-2)
	netip.MustParsePrefix("203.0.113.0/24"),     // documentation (TEST-NET-3)
	netip.MustParsePrefix("2001:db8::/32"),      // documentation
	netip.MustParsePrefix("64:ff9b::/96"),       // NAT64: may embed a private IPv4
	netip.MustParsePrefix("2002::/16"),          // 6to4: may embed a private IPv4
	netip.MustParsePrefix("::/96"),              // IPv4-compatible IPv6
}

// IsSpecial reports whether a is an address only a rule naming it may
// allow: loopback, private, shared, link-local, unspecified, multicast,
// reserved, or one of the host's own addresses given to Compile.
func (s *Set) IsSpecial(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	if a.Zone() != "" {
		// No prefix contains a zoned address, and connect(2) to "::%x"
		// reaches the host's loopback: special, whatever the address.
		return true
	}
	a = a.Unmap()
	if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return true
	}
	for _, p := range fixedSpecial {
		if p.Contains(a) {
			return true
		}
	}
	for _, p := range s.special {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// loopbackName reports whether a request host name means the host's
// loopback: localhost, names under .localhost, and host.sbx.internal.
func loopbackName(h string) bool {
	return h == "localhost" || strings.HasSuffix(h, ".localhost") || h == "host.sbx.internal"
}

// Evaluate decides req. It is pure and safe for concurrent use.
func (s *Set) Evaluate(req Request) Decision {
	if s == nil {
		return Decision{Default: PresetDenyAll, Reason: "no policy loaded; denying everything"}
	}
	if s.err != nil {
		return Decision{Default: PresetDenyAll, Reason: fmt.Sprintf("policy is malformed, so everything is denied: %v", s.err)}
	}
	host := normalizeHost(req.Host)
	ip := req.IP.Unmap()
	if host != "" {
		if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
			if !ip.IsValid() {
				ip = a.Unmap()
			}
			host = ""
		}
	}
	if ip.Zone() != "" {
		// Never a destination (IsSpecial): no rule, not even one for
		// the address, opens it.
		return Decision{Default: s.def, Reason: "an IPv6 address with a zone is never a destination"}
	}
	loopback := loopbackName(host) || (ip.IsValid() && ip.IsLoopback())
	special := loopback || s.IsSpecial(ip)
	if loopbackName(host) {
		host = "" // never matched by host patterns
	}

	var allow *compiledRule
	for i := range s.rules {
		cr := &s.rules[i]
		if cr.rule.Scope != "" && cr.rule.Scope != req.Sandbox {
			continue
		}
		if !cr.matches(host, ip, req.Port, special, loopback) {
			continue
		}
		if cr.rule.Action == Deny {
			r := cr.rule
			return Decision{Rule: &r, Default: s.def, Reason: "denied by rule " + r.String()}
		}
		if allow == nil {
			allow = cr
		}
	}
	if allow != nil {
		r := allow.rule
		return Decision{Allow: true, Rule: &r, Default: s.def, Reason: "allowed by rule " + r.String()}
	}
	if special {
		what := "a local or private address"
		if loopback {
			what = "the host's loopback"
		}
		return Decision{Default: s.def, Reason: fmt.Sprintf(
			"no rule names this address; %s is reached only through a rule naming its IP, a CIDR or localhost:PORT", what)}
	}
	switch s.def {
	case PresetAllowAll:
		return Decision{Allow: true, Default: s.def, Reason: "no rule matches; default allow-all allows"}
	case PresetBalanced:
		if host != "" {
			for _, b := range balancedResources {
				if b.res.matchHost(host, req.Port) {
					return Decision{Allow: true, Default: s.def, Builtin: b.entry.Resource,
						Reason: fmt.Sprintf("no rule matches; default balanced allows it (built-in %s)", b.entry.Resource)}
				}
			}
		}
	}
	return Decision{Default: s.def, Reason: fmt.Sprintf("no rule matches; default %s denies", s.def)}
}

// matches reports whether the rule covers the request. special says the
// request's address is special: host patterns then cover it only when the
// rule denies (deny wins across name and address).
func (cr *compiledRule) matches(host string, ip netip.Addr, port uint16, special, loopback bool) bool {
	r := cr.res
	if r.Port != 0 && r.Port != port {
		return false
	}
	switch r.Kind {
	case KindIP, KindCIDR:
		return ip.IsValid() && r.Prefix.Contains(ip)
	case KindLocalhost:
		return loopback
	default:
		if special && cr.rule.Action == Allow {
			return false
		}
		return host != "" && r.matchHost(host, port)
	}
}

// matchHost matches a normalised host name (never an IP literal) against a
// host pattern, including its port.
func (r Resource) matchHost(host string, port uint16) bool {
	if r.Port != 0 && r.Port != port {
		return false
	}
	switch r.Kind {
	case KindHost:
		return host == r.Host
	case KindAllHosts:
		return true
	case KindOneLabel:
		prefix, ok := strings.CutSuffix(host, "."+r.Host)
		return ok && prefix != "" && !strings.Contains(prefix, ".")
	case KindAnyDepth:
		prefix, ok := strings.CutSuffix(host, "."+r.Host)
		return ok && prefix != ""
	}
	return false
}

// MayAllowName reports whether some connection to host (a name, judged
// without its addresses) could be allowed for sandbox at some port: by a
// bare host rule, a host:port rule, or the default. The DNS resolver
// answers only such names, so a query cannot carry data out through a name
// the policy would never let the sandbox reach.
func (s *Set) MayAllowName(host, sandbox string) bool {
	if s == nil || s.err != nil {
		return false
	}
	ports := []uint16{0, 80, 443}
	for i := range s.rules {
		if p := s.rules[i].res.Port; p != 0 {
			ports = append(ports, p)
		}
	}
	for _, p := range ports {
		if s.Evaluate(Request{Host: host, Port: p, Sandbox: sandbox}).Allow {
			return true
		}
	}
	return false
}

// WebPorts are the ports a rule without a port opens on a name the hosts
// override maps to a special address (loopback, private, the host's own).
var WebPorts = []uint16{80, 443}

// EvaluateMapped decides a connection to req.Host at req.IP, where the
// name's address came from an operator's hosts override (SBX_HOSTS_FILE)
// rather than DNS. Such a name may point at a special address, which a
// host pattern never reaches in Evaluate; here it does, but narrowly:
//
//   - a deny rule matching the name or the address wins;
//   - a rule naming the address (IP, CIDR, localhost:PORT) decides;
//   - a rule naming the name (a pattern other than "**") with this port
//     allows, wherever it stands among the rules;
//   - a rule naming the name without a port, the balanced list or the
//     allow-all default allow only WebPorts.
//
// Anything else is denied, so a mapped name never opens every port of the
// host's loopback. For an address that is not special it is Evaluate.
func (s *Set) EvaluateMapped(req Request) Decision {
	if s == nil || s.err != nil || !req.IP.IsValid() {
		return s.Evaluate(req)
	}
	ip := req.IP.Unmap()
	if !ip.IsLoopback() && !s.IsSpecial(ip) {
		return s.Evaluate(req)
	}
	byName := s.Evaluate(Request{Host: req.Host, Port: req.Port, Sandbox: req.Sandbox})
	if !byName.Allow && byName.Rule != nil {
		return byName
	}
	byAddr := s.Evaluate(Request{IP: ip, Port: req.Port, Sandbox: req.Sandbox})
	if byAddr.Rule != nil {
		return byAddr
	}
	if !byName.Allow {
		return byName
	}
	if s.NamesPort(req.Host, req.Port, req.Sandbox) {
		return byName // a rule names the name (not "**") with this very port
	}
	for _, p := range WebPorts {
		if req.Port == p {
			return byName
		}
	}
	return Decision{Default: s.def, Reason: fmt.Sprintf(
		"%s is mapped to %s by SBX_HOSTS_FILE; a rule without a port opens only ports 80 and 443 of a name mapped to a local address; allow %s:%d to reach this port",
		normalizeHost(req.Host), ip, normalizeHost(req.Host), req.Port)}
}

// NamesPort reports whether an allow rule of sandbox (or a global one)
// names host, by a host pattern other than **, together with this very
// port, and no deny rule matches host at that port.
func (s *Set) NamesPort(host string, port uint16, sandbox string) bool {
	if s == nil || s.err != nil || port == 0 {
		return false
	}
	host = normalizeHost(host)
	named := false
	for i := range s.rules {
		cr := &s.rules[i]
		if cr.rule.Scope != "" && cr.rule.Scope != sandbox {
			continue
		}
		if !cr.res.IsHostPattern() || cr.res.Kind == KindAllHosts || !cr.res.matchHost(host, port) {
			continue
		}
		if cr.rule.Action == Deny {
			return false
		}
		if cr.res.Port == port {
			named = true
		}
	}
	return named
}
