// Package resolve provides the name resolution seam used on sbx's policy
// path: a small Resolver interface, the system resolver, and a hosts-format
// file that overrides another resolver for the names it lists
// (SBX_HOSTS_FILE; the caller reads the variable, this package never does).
//
// Names mapped by a hosts file may resolve to loopback or private addresses;
// HostsFile.Mapped lets the policy engine tell such names apart from names
// the real DNS answered.
package resolve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// Resolver looks up the addresses of a host name.
//
// network is "ip", "ip4" or "ip6", as for net.Resolver.LookupNetIP. A name
// that does not exist yields an error satisfying errors.As(*net.DNSError)
// with IsNotFound set. Implementations are safe for concurrent use.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// System returns the operating system's resolver (net.DefaultResolver).
func System() Resolver { return net.DefaultResolver }

var _ Resolver = (*HostsFile)(nil)

// HostsFile is a Resolver that answers from a hosts-format file for the
// names the file lists and defers to another Resolver for all other names.
//
// The file is read once, when the HostsFile is made: a sandbox's mapping
// is fixed for its run, so nothing written to the file later (by anyone)
// changes where an allowed name leads. HostsFile is safe for concurrent
// use.
type HostsFile struct {
	path  string
	next  Resolver
	names map[string][]netip.Addr // read-only after NewHostsFile
}

// NewHostsFile reads the hosts-format file at path and returns a Resolver
// that overrides next for the names it lists. A nil next answers "not found"
// for every unlisted name. The file must exist and parse.
//
// Format: one entry per line, "IP name [name...]"; "#" starts a comment;
// IPv4 and IPv6 addresses (zones are rejected); names are matched without
// regard to case or a trailing dot.
func NewHostsFile(path string, next Resolver) (*HostsFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read hosts file: %w", err)
	}
	names, err := ParseHosts(data)
	if err != nil {
		return nil, fmt.Errorf("parse hosts file %s: %w", path, err)
	}
	return &HostsFile{path: path, next: next, names: names}, nil
}

// ParseHosts parses hosts-format data into a map from lower-case name to its
// addresses in file order. Every malformed line is reported, joined.
func ParseHosts(data []byte) (map[string][]netip.Addr, error) {
	names := make(map[string][]netip.Addr)
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		ip, err := netip.ParseAddr(f[0])
		if err != nil || ip.Zone() != "" {
			errs = append(errs, fmt.Errorf("line %d: invalid address %q", n, f[0]))
			continue
		}
		if len(f) < 2 {
			errs = append(errs, fmt.Errorf("line %d: address %s has no names", n, f[0]))
			continue
		}
		for _, name := range f[1:] {
			name = canonical(name)
			if name == "" {
				continue
			}
			names[name] = append(names[name], ip.Unmap())
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return names, nil
}

func canonical(name string) string {
	return strings.ToLower(strings.TrimRight(name, "."))
}

// Mapped reports whether host is listed in the file (and so is answered from
// it rather than by the next resolver).
func (h *HostsFile) Mapped(host string) bool {
	_, ok := h.names[canonical(host)]
	return ok
}

// LookupNetIP answers from the file for listed names, filtered by network
// ("ip", "ip4", "ip6"); a listed name with no address of the wanted family is
// "not found", never passed on. Other names go to the next resolver.
func (h *HostsFile) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	addrs, ok := h.names[canonical(host)]
	if !ok {
		if h.next == nil {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return h.next.LookupNetIP(ctx, network, host)
	}
	var out []netip.Addr
	for _, a := range addrs {
		switch {
		case network == "ip4" && !a.Is4(), network == "ip6" && !a.Is6():
			continue
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}
