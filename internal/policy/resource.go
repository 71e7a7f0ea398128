package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Kind is the form of a Resource.
type Kind int

// Resource kinds.
const (
	// KindHost is one exact host name: example.com.
	KindHost Kind = iota + 1
	// KindOneLabel is *.example.com: exactly one label before the suffix.
	KindOneLabel
	// KindAnyDepth is **.example.com: one or more labels before the suffix.
	KindAnyDepth
	// KindAllHosts is **: every host name (never a special address).
	KindAllHosts
	// KindIP is one IP address (Prefix is a /32 or /128).
	KindIP
	// KindCIDR is a network in CIDR notation.
	KindCIDR
	// KindLocalhost is localhost:PORT: the host's loopback on one port.
	KindLocalhost
)

func (k Kind) String() string {
	switch k {
	case KindHost:
		return "host"
	case KindOneLabel:
		return "one-label wildcard"
	case KindAnyDepth:
		return "any-depth wildcard"
	case KindAllHosts:
		return "all hosts"
	case KindIP:
		return "ip"
	case KindCIDR:
		return "cidr"
	case KindLocalhost:
		return "localhost"
	}
	return "unknown"
}

// Resource is a parsed, normalised destination pattern. The zero value is
// not valid; build one with ParseResource.
type Resource struct {
	Kind Kind
	// Host is the exact name (KindHost) or the suffix after "*." or "**."
	// (KindOneLabel, KindAnyDepth); lowercase, without a trailing dot.
	Host string
	// Prefix is the address (as a full-length prefix) or network for
	// KindIP and KindCIDR.
	Prefix netip.Prefix
	// Port is the only port the resource covers; 0 means every port.
	Port uint16
}

// IsHostPattern reports whether r matches host names (as opposed to
// addresses or localhost).
func (r Resource) IsHostPattern() bool {
	switch r.Kind {
	case KindHost, KindOneLabel, KindAnyDepth, KindAllHosts:
		return true
	}
	return false
}

// String returns the canonical text of r; ParseResource(r.String()) == r.
func (r Resource) String() string {
	var s string
	switch r.Kind {
	case KindHost:
		s = r.Host
	case KindOneLabel:
		s = "*." + r.Host
	case KindAnyDepth:
		s = "**." + r.Host
	case KindAllHosts:
		s = "**"
	case KindIP:
		a := r.Prefix.Addr()
		if r.Port != 0 {
			return netip.AddrPortFrom(a, r.Port).String()
		}
		return a.String()
	case KindCIDR:
		return r.Prefix.String()
	case KindLocalhost:
		s = "localhost"
	default:
		return "<invalid>"
	}
	if r.Port != 0 {
		s += ":" + strconv.Itoa(int(r.Port))
	}
	return s
}

// ParseResources parses a comma-separated list. Empty items are ignored; the
// error joins one message per bad item.
func ParseResources(list string) ([]Resource, error) {
	var out []Resource
	var errs []error
	for item := range strings.SplitSeq(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		r, err := ParseResource(item)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, r)
	}
	if len(errs) == 0 && len(out) == 0 {
		errs = append(errs, errors.New("no resource given"))
	}
	return out, errors.Join(errs...)
}

// ParseResource parses one resource (see the package comment for the forms)
// and normalises it: lowercase, no trailing dot, IPv4-mapped IPv6 unmapped,
// CIDR host bits cleared. The error names the resource and what is wrong.
func ParseResource(s string) (Resource, error) {
	r, err := parseResource(strings.TrimSpace(s))
	if err != nil {
		return Resource{}, fmt.Errorf("resource %q: %s", s, err)
	}
	return r, nil
}

func parseResource(s string) (Resource, error) {
	if s == "" {
		return Resource{}, errors.New("empty")
	}
	if len(s) > 300 {
		return Resource{}, errors.New("too long")
	}
	if strings.Contains(s, "://") {
		return Resource{}, errors.New("is a URL; give the host name only (for example example.com or example.com:443)")
	}
	if strings.ContainsAny(s, " \t\r\n?#@,") {
		return Resource{}, errors.New("contains a space or one of ?#@,; give a host, IP or CIDR")
	}
	// CIDR.
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Resource{}, errors.New("is not a valid CIDR (for example 10.0.0.0/8 or fd00::/8)")
		}
		if p.Addr().Zone() != "" {
			return Resource{}, errors.New("IPv6 zones are not supported")
		}
		if p.Addr().Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				return Resource{}, errors.New("IPv4-mapped CIDR shorter than /96")
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), bits)
		}
		return Resource{Kind: KindCIDR, Prefix: p.Masked()}, nil
	}
	// Bare IP, or [v6] without port.
	addrText := s
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		addrText = s[1 : len(s)-1]
	}
	if a, err := netip.ParseAddr(addrText); err == nil {
		return ipResource(a, 0)
	}
	// IP:port, [v6]:port.
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return Resource{}, errors.New("port 0 is not a port")
		}
		return ipResource(ap.Addr(), ap.Port())
	}
	if strings.HasPrefix(s, "[") {
		return Resource{}, errors.New("is not a valid [IPv6]:port")
	}
	host, port := s, uint16(0)
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host = s[:i]
		if strings.Contains(host, ":") {
			return Resource{}, errors.New("is not a valid IPv6 address; write an IPv6 address with a port as [addr]:port")
		}
		p, err := parsePort(s[i+1:])
		if err != nil {
			return Resource{}, err
		}
		port = p
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	switch {
	case host == "**":
		return Resource{Kind: KindAllHosts, Port: port}, nil
	case host == "localhost":
		if port == 0 {
			return Resource{}, errors.New("localhost needs a port: localhost:PORT")
		}
		return Resource{Kind: KindLocalhost, Port: port}, nil
	case strings.HasPrefix(host, "**."):
		suffix := host[3:]
		if err := checkHostName(suffix); err != nil {
			return Resource{}, err
		}
		return Resource{Kind: KindAnyDepth, Host: suffix, Port: port}, nil
	case strings.HasPrefix(host, "*."):
		suffix := host[2:]
		if err := checkHostName(suffix); err != nil {
			return Resource{}, err
		}
		return Resource{Kind: KindOneLabel, Host: suffix, Port: port}, nil
	case host == "*":
		return Resource{}, errors.New("* alone is not a pattern; use ** for all hosts")
	}
	if err := checkHostName(host); err != nil {
		return Resource{}, err
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return Resource{}, errors.New("names under localhost are the host's loopback; use localhost:PORT")
	}
	return Resource{Kind: KindHost, Host: host, Port: port}, nil
}

func ipResource(a netip.Addr, port uint16) (Resource, error) {
	if a.Zone() != "" {
		return Resource{}, errors.New("IPv6 zones are not supported")
	}
	a = a.Unmap()
	return Resource{Kind: KindIP, Prefix: netip.PrefixFrom(a, a.BitLen()), Port: port}, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("has an empty port")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("has port %q, which is not a number", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("has port %s, outside 1-65535", s)
	}
	return uint16(n), nil
}

// checkHostName validates a lowercase host name without wildcards.
func checkHostName(h string) error {
	if h == "" {
		return errors.New("has an empty host name")
	}
	if len(h) > 253 {
		return errors.New("host name is longer than 253 characters")
	}
	if err := checkHostRunes(h); err != nil {
		return err
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" {
			return errors.New("host name has an empty label (two dots in a row, or a leading dot)")
		}
		if strings.Contains(l, "*") {
			return errors.New("wildcards are allowed only as the first label: *.example.com or **.example.com")
		}
		if len(l) > 63 {
			return fmt.Errorf("host name label %q is longer than 63 characters", l)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("host name label %q starts or ends with a hyphen", l)
		}
	}
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" {
		return errors.New("looks like an IP address but is not a valid one")
	}
	return nil
}

// checkHostRunes refuses any character but ASCII letters, digits, '-',
// '_' and '.', naming the character as it was typed; for a name in
// another script it gives the punycode (xn--) form DNS knows it by.
func checkHostRunes(h string) error {
	const allowed = "only letters a-z, digits, hyphens and underscores are allowed"
	bad, idn := rune(-1), true
	for i, r := range h {
		if r == utf8.RuneError {
			// Also U+FFFD itself: lowercasing turned invalid bytes into it.
			return fmt.Errorf("host name has a byte (at %d) that is not UTF-8 text; %s", i, allowed)
		}
		if r < utf8.RuneSelf {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == '*') {
				return fmt.Errorf("host name has character %q; %s", r, allowed)
			}
			continue
		}
		if bad < 0 {
			bad = r
		}
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) && !unicode.Is(unicode.Mn, r) {
			idn = false
		}
	}
	if bad < 0 {
		return nil
	}
	if !idn {
		return fmt.Errorf("host name has character %q (U+%04X); %s", bad, bad, allowed)
	}
	ace, err := idna.Lookup.ToASCII(h)
	if err != nil {
		return fmt.Errorf("host name has character %q (U+%04X); %s (%v)", bad, bad, allowed, err)
	}
	return fmt.Errorf("host name has character %q (U+%04X); %s: write an international name in its punycode form, here %s",
		bad, bad, allowed, ace)
}

// normalizeHost lowercases a request host name and strips a trailing dot.
func normalizeHost(h string) string {
	return strings.ToLower(strings.TrimSuffix(h, "."))
}
