package agent

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/sbx-dev/sbx/api/agentapi"
)

// Files the network setup writes, relative to the root.
const (
	caFile        = "/usr/local/share/ca-certificates/sbx-proxy-ca.crt"
	caBundle      = "/etc/ssl/certs/ca-certificates.crt"
	caMarkerBegin = "# sbx proxy CA (begin)\n"
	caMarkerEnd   = "# sbx proxy CA (end)\n"
	profileFile   = "/etc/profile.d/sbx-proxy.sh"
	sudoersFile   = "/etc/sudoers.d/sbx-env"
	resolvConf    = "/etc/resolv.conf"
)

// Env returns the environment every process gets from the last network
// setup. Safe for concurrent use.
func (g *Guest) Env() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.env)
}

// setupNetwork configures the interface, resolver, CA trust and proxy
// environment from n. It is idempotent.
func (g *Guest) setupNetwork(n *agentapi.NetworkSetup) error {
	if err := configureLink(n); err != nil {
		return err
	}
	root := filepath.Dir(g.etc) // "/" in the guest
	var errs []error
	if len(n.DNS) > 0 {
		var b strings.Builder
		for _, d := range n.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		b.WriteString("options timeout:2 attempts:2\n")
		p := filepath.Join(root, resolvConf)
		os.Remove(p) // may be a symlink into a missing /run tree
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("write resolv.conf: %w", err))
		}
	}
	if n.CACertPEM != "" {
		if err := trustCA(root, n.CACertPEM); err != nil {
			errs = append(errs, err)
		}
	}
	env := slices.Clone(n.Env)
	if err := writeEnvFiles(root, env); err != nil {
		errs = append(errs, err)
	}
	g.mu.Lock()
	g.env = env
	g.mu.Unlock()
	g.log.Info("network configured", "address", n.Address, "gateway", n.Gateway)
	if len(errs) > 0 {
		return fmt.Errorf("network setup: %w", joinErrs(errs))
	}
	return nil
}

func joinErrs(errs []error) error {
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

// configureLink brings lo and the interface up with n's address and
// default route.
func configureLink(n *agentapi.NetworkSetup) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	link, err := findLink(n.MAC)
	if err != nil {
		return err
	}
	if n.MTU > 0 {
		if err := netlink.LinkSetMTU(link, n.MTU); err != nil {
			return fmt.Errorf("set mtu: %w", err)
		}
	}
	addr, err := netlink.ParseAddr(n.Address)
	if err != nil {
		return fmt.Errorf("network setup: address %q: %w", n.Address, err)
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("set address %s: %w", n.Address, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", link.Attrs().Name, err)
	}
	gw := net.ParseIP(n.Gateway)
	if gw == nil {
		return fmt.Errorf("network setup: gateway %q is not an address", n.Gateway)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("set default route via %s: %w", n.Gateway, err)
	}
	return nil
}

// findLink returns the network card with address mac (any card when mac
// is empty). When no card has it and there is exactly one, that card gets
// mac: a guest restored from a snapshot resumes with the snapshot VM's
// address, and two sandboxes must not share one.
func findLink(mac string) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	var cards []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.Name == "lo" || l.Type() != "device" {
			continue
		}
		if mac == "" || strings.EqualFold(a.HardwareAddr.String(), mac) {
			return l, nil
		}
		cards = append(cards, l)
	}
	if len(cards) != 1 {
		return nil, fmt.Errorf("no network interface with MAC %q (%d others)", mac, len(cards))
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, fmt.Errorf("network setup: MAC %q: %w", mac, err)
	}
	if err := netlink.LinkSetHardwareAddr(cards[0], hw); err != nil {
		return nil, fmt.Errorf("set the MAC address of %s to %s: %w", cards[0].Attrs().Name, mac, err)
	}
	return netlink.LinkByIndex(cards[0].Attrs().Index)
}

// trustCA installs pem as a trusted CA: as a file for tools that read the
// folder, and inside the system bundle (between markers, replaced on each
// setup) so no update-ca-certificates run is needed at boot.
func trustCA(root, pem string) error {
	if !strings.HasSuffix(pem, "\n") {
		pem += "\n"
	}
	p := filepath.Join(root, caFile)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("trust proxy CA: %w", err)
	}
	if err := os.WriteFile(p, []byte(pem), 0o644); err != nil {
		return fmt.Errorf("trust proxy CA: %w", err)
	}
	bundle := filepath.Join(root, caBundle)
	old, err := os.ReadFile(bundle)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("trust proxy CA: %w", err)
	}
	if i := bytes.Index(old, []byte(caMarkerBegin)); i >= 0 {
		if j := bytes.Index(old[i:], []byte(caMarkerEnd)); j >= 0 {
			old = append(old[:i:i], old[i+j+len(caMarkerEnd):]...)
		}
	}
	next := append(old, []byte(caMarkerBegin+pem+caMarkerEnd)...)
	if err := os.MkdirAll(filepath.Dir(bundle), 0o755); err != nil {
		return fmt.Errorf("trust proxy CA: %w", err)
	}
	if err := os.WriteFile(bundle, next, 0o644); err != nil {
		return fmt.Errorf("trust proxy CA: %w", err)
	}
	return nil
}

// writeEnvFiles makes the environment reach login shells and survive sudo.
func writeEnvFiles(root string, env []string) error {
	var sh strings.Builder
	var keys []string
	sh.WriteString("# Written by sbx-agent at boot: the sandbox's proxy settings.\n")
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		keys = append(keys, k)
		fmt.Fprintf(&sh, "export %s='%s'\n", k, strings.ReplaceAll(v, "'", `'\''`))
	}
	var errs []error
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(profileFile)), 0o755); err == nil {
		if err := os.WriteFile(filepath.Join(root, profileFile), []byte(sh.String()), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if len(keys) > 0 {
		sudoers := "# Written by sbx-agent: keep the sandbox's proxy settings across sudo.\nDefaults env_keep += \"" + strings.Join(keys, " ") + "\"\n"
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(sudoersFile)), 0o755); err == nil {
			if err := os.WriteFile(filepath.Join(root, sudoersFile), []byte(sudoers), 0o440); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("write proxy environment: %w", joinErrs(errs))
	}
	return nil
}
