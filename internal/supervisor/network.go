package supervisor

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/audit"
	"github.com/sbx-dev/sbx/internal/netstack"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/proxy"
	"github.com/sbx-dev/sbx/internal/resolve"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/secrets"
)

// Network constants of every sandbox's user-mode network.
const (
	// ProxyPort is the forward proxy's port on the gateway.
	ProxyPort = 3128
	// AuditFile is the per-sandbox decision log.
	AuditFile = "audit.jsonl"
	// NetSocket is the unix socket QEMU's network card connects to.
	NetSocket = "net.sock"
)

// network is one sandbox's user-mode network: the netstack the VM's card is
// wired to, the DNS resolver, the proxy, the policy engine and the audit
// log. Everything the guest sends goes through flow, the per-flow decision.
type network struct {
	sandboxID   string
	sandboxName string
	log         *slog.Logger
	engine      *policy.Engine
	audit       *audit.Logger
	hosts       *resolve.HostsFile // nil without SBX_HOSTS_FILE
	lookup      resolve.Resolver
	names       *netstack.PolicyResolver
	ca          *proxy.CA
	proxy       *proxy.Proxy
	stack       *netstack.Stack
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	mac         net.HardwareAddr
	inject      *secrets.Injector // nil without a secret store

	dropMu   sync.Mutex
	lastDrop map[string]time.Time // guarded by dropMu; rate-limits drop events and limit notes

	// flows counts the guest's TCP connections in progress on every path
	// (raw, transparent, forward proxy); maxFlows bounds it.
	flows     atomic.Int64
	maxFlows  int64
	peak      atomic.Int64 // most flows since memory was last given back
	freeing   atomic.Bool  // a FreeOSMemory is scheduled
	freeTimer *time.Timer  // guarded by dropMu; the scheduled FreeOSMemory

	wg sync.WaitGroup
}

// hostResolver answers host.sbx.internal with the host's loopback and
// everything else through next.
type hostResolver struct{ next resolve.Resolver }

func (h hostResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if name == netstack.HostName || name == "localhost" || strings.HasSuffix(name, ".localhost") {
		// Answered here, never upstream.
		if network == "ip6" {
			return []netip.Addr{netip.IPv6Loopback()}, nil
		}
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	return h.next.LookupNetIP(ctx, network, host)
}

// newNetwork builds the network of sandbox sb. Start serves it.
func newNetwork(ctx context.Context, sb *sandbox.Sandbox, boot Boot, store *secrets.Store, log *slog.Logger) (_ *network, err error) {
	lim := boot.Limits.withDefaults()
	n := &network{
		sandboxID: sb.Config.ID, sandboxName: sb.Config.Name, log: log.With("component", "netstack"),
		lastDrop: map[string]time.Time{}, maxFlows: int64(lim.Flows),
	}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	hostAddrs := hostAddresses()
	n.engine, err = policy.NewEngine(policy.NewStore(boot.ConfigDir), policy.EngineOptions{SpecialAddrs: hostAddrs, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("load network policy: %w", err)
	}
	if perr := n.engine.Err(); perr != nil {
		log.Error("network policy is malformed; denying everything", "err", perr)
	}
	n.audit, err = audit.OpenWith(sb.Path(AuditFile), log, audit.Options{})
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	var base resolve.Resolver = resolve.System()
	if boot.HostsFile != "" {
		n.hosts, err = resolve.NewHostsFile(boot.HostsFile, base)
		if err != nil {
			return nil, fmt.Errorf("read SBX_HOSTS_FILE %s: %w", boot.HostsFile, err)
		}
		base = n.hosts
	}
	n.lookup = hostResolver{next: base}
	n.names = &netstack.PolicyResolver{
		Allowed: func(name string) bool { return n.engine.Set().MayAllowName(name, n.sandboxID) },
		Lookup: func(ctx context.Context, name string) ([]netip.Addr, error) {
			return n.lookup.LookupNetIP(ctx, "ip", name)
		},
		MaxLookups: lim.DNS,
		Limited: func(what string) {
			n.limitHit(what, "new ones get SERVFAIL until some are free")
		},
	}
	n.ca, err = proxy.LoadOrCreateCA(filepath.Join(boot.ConfigDir, "ca"))
	if err != nil {
		return nil, fmt.Errorf("load the proxy CA: %w", err)
	}
	var d net.Dialer
	d.Timeout = 10 * time.Second
	n.dial = d.DialContext
	pc := proxy.Config{
		Decide:   n.decideProxy,
		Resolver: n.lookup,
		// Through n.dial at call time: the one dialer of every path,
		// which tests replace to see what each connection reaches.
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.dial(ctx, network, addr)
		},
		CA:    n.ca,
		Audit: n.auditProxy,
		Log:   log.With("component", "proxy"),
	}
	if store != nil {
		// Credentials: TLS to a secret's hosts is terminated so the proxy
		// can put the real value on the wire; the guest only ever sees
		// sentinels and placeholders.
		n.inject = secrets.NewInjector(store, n.sandboxID, log.With("component", "secrets"), n.auditSecret)
		pc.Intercept = n.inject.Intercept
		// Real values travel only inside TLS, to their own hosts, on the
		// API port (443) or one a rule names; responses from those hosts
		// are scrubbed of them.
		n.inject.ExtraPort = n.portRule
		pc.ModifyRequest = n.inject.ModifyRequest
		pc.ModifyResponse = n.inject.ModifyResponse
		pc.ScrubText = n.inject.ScrubText
	}
	n.proxy, err = proxy.New(pc)
	if err != nil {
		return nil, fmt.Errorf("start proxy: %w", err)
	}
	n.mac, err = net.ParseMAC(boot.MAC)
	if err != nil {
		return nil, fmt.Errorf("guest mac %q: %w", boot.MAC, err)
	}
	n.stack, err = netstack.New(ctx, netstack.Config{
		GuestMAC: n.mac,
		Flows:    n,
		DNS:      n.names,
		Log:      n.log,
	})
	if err != nil {
		return nil, fmt.Errorf("start network stack: %w", err)
	}
	return n, nil
}

// start listens on sock for QEMU's network card and serves the forward
// proxy and the policy watcher until ctx ends.
func (n *network) start(ctx context.Context, sock string) error {
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen for the vm's network card: %w", err)
	}
	pl, err := n.stack.ListenTCP(ProxyPort)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen for the forward proxy: %w", err)
	}
	n.wg.Add(3)
	go func() {
		defer n.wg.Done()
		defer ln.Close()
		go func() {
			<-ctx.Done()
			ln.Close()
		}()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if err := n.stack.AcceptQEMU(ctx, conn); err != nil && !errors.Is(err, netstack.ErrClosed) {
				n.log.Warn("network card connection ended", "err", err)
			}
			conn.Close()
		}
	}()
	go func() {
		defer n.wg.Done()
		if err := n.proxy.Serve(ctx, limitListener{pl, n}); err != nil {
			n.log.Warn("forward proxy ended", "err", err)
		}
	}()
	go func() {
		defer n.wg.Done()
		_ = n.engine.Watch(ctx, policy.DefaultWatchInterval)
	}()
	return nil
}

// close stops everything; the caller has cancelled start's ctx first.
func (n *network) close() {
	n.dropMu.Lock()
	if n.freeTimer != nil {
		n.freeTimer.Stop()
	}
	n.dropMu.Unlock()
	if n.stack != nil {
		n.stack.Close()
	}
	n.wg.Wait()
	if n.proxy != nil {
		n.proxy.Close()
	}
	if n.audit != nil {
		n.audit.Close()
	}
}

// guestSetup is the guest half of the network.
func (n *network) guestSetup() *agentapi.NetworkSetup {
	gw := netstack.DefaultGateway.String()
	proxyURL := "http://" + gw + ":" + strconv.Itoa(ProxyPort)
	noProxy := "localhost,127.0.0.1,::1"
	pem := n.ca.CertPEM()
	env := []string{
		"HTTP_PROXY=" + proxyURL, "HTTPS_PROXY=" + proxyURL, "NO_PROXY=" + noProxy,
		"http_proxy=" + proxyURL, "https_proxy=" + proxyURL, "no_proxy=" + noProxy,
		"PROXY_CA_CERT_B64=" + base64.StdEncoding.EncodeToString(pem),
		"NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/sbx-proxy-ca.crt",
		"REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt",
	}
	if n.inject != nil {
		env = append(env, n.inject.GuestEnv()...)
	}
	return &agentapi.NetworkSetup{
		MAC:       n.mac.String(),
		Address:   netstack.DefaultGuestIP.String() + "/" + strconv.Itoa(netstack.DefaultSubnet.Bits()),
		Gateway:   gw,
		DNS:       []string{gw},
		MTU:       netstack.DefaultMTU,
		Env:       env,
		CACertPEM: string(pem),
	}
}

// judge decides a connection to host (a name, may be empty) at ip (the
// real address it will reach; may be invalid before the name is resolved)
// and port. It is the one judgement behind every path (forward proxy,
// transparent proxy, raw TCP): a name mapped by SBX_HOSTS_FILE is judged
// with its mapped address by policy.Set.EvaluateMapped, so it reaches a
// loopback or private address only on the port its rule names (80 and 443
// for a rule without a port).
func (n *network) judge(host string, ip netip.Addr, port uint16) policy.Decision {
	req := policy.Request{Host: host, IP: ip, Port: port, Sandbox: n.sandboxID}
	set := n.engine.Set()
	var d policy.Decision
	if host != "" && ip.IsValid() && n.hosts != nil && n.hosts.Mapped(host) {
		d = set.EvaluateMapped(req)
	} else {
		d = set.Evaluate(req)
	}
	// A name allowed without a port (a rule without one, or the balanced
	// list) opens its web ports only: many names share a CDN's
	// addresses, which serve every other name on other ports too.
	if d.Allow && host != "" && !slices.Contains(policy.WebPorts, port) && portlessByName(d) && !set.NamesPort(host, port, n.sandboxID) {
		return policy.Decision{Default: d.Default, Reason: fmt.Sprintf(
			"%s is allowed without a port, which opens only ports 80 and 443; allow %s:%d to reach this port", host, host, port)}
	}
	return d
}

// portlessByName reports whether d allowed by a name without naming a
// port: a host pattern rule without one, or the balanced list.
func portlessByName(d policy.Decision) bool {
	if d.Builtin != "" {
		return true
	}
	if d.Rule == nil {
		return false
	}
	res, err := policy.ParseResource(d.Rule.Resource)
	return err != nil || (res.IsHostPattern() && res.Port == 0)
}

func ruleText(d policy.Decision) string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.ID + " " + d.Rule.Resource
}

// decideProxy is the proxy's policy hook: every address the name resolved
// to must be allowed.
func (n *network) decideProxy(_ context.Context, t proxy.Target) proxy.Decision {
	decide := func(ip netip.Addr) policy.Decision { return n.judge(t.Host, ip, t.Port) }
	var d policy.Decision
	if len(t.IPs) == 0 {
		d = decide(netip.Addr{})
	}
	for _, ip := range t.IPs {
		d = decide(ip)
		if !d.Allow {
			break
		}
	}
	out := proxy.Decision{Allow: d.Allow, Rule: ruleText(d), Reason: d.Reason}
	if !d.Allow {
		out.Hint = "sbx policy allow network " + allowHint(t.Host, t.Port)
	}
	return out
}

func allowHint(host string, port uint16) string {
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a, port).String()
	}
	if host == netstack.HostName {
		return "localhost:" + strconv.Itoa(int(port))
	}
	return host
}

func (n *network) auditProxy(e proxy.Event) {
	proto := audit.ProtoHTTP
	if e.Scheme == proxy.SchemeHTTPS {
		proto = audit.ProtoHTTPS
	} else if e.Scheme == proxy.SchemeTCP {
		proto = audit.ProtoTCP
	}
	path := audit.PathForward
	if e.Via == proxy.ViaTransparent {
		path = audit.PathTransparent
	}
	n.audit.Log(audit.Event{
		Time: e.Time, Sandbox: n.sandboxName, SandboxID: n.sandboxID, Host: e.Host, IP: e.IP, Port: e.Port,
		Path: path, Proto: proto, Allowed: e.Allowed, Rule: e.Rule, Reason: e.Reason, Method: e.Method, URLPath: e.Path,
	})
}

// auditSecret records a secret's placeholder or value seen on its way to a
// host it does not belong to (it went out unchanged). Never the value.
func (n *network) auditSecret(note secrets.AuditNote) {
	rule := ""
	if note.Blocked {
		rule = "secret-scan"
	}
	n.audit.Log(audit.Event{
		Time: note.Time, Sandbox: n.sandboxName, SandboxID: n.sandboxID, Host: note.Host,
		Path: audit.PathForward, Proto: audit.ProtoHTTPS, Allowed: !note.Blocked, Rule: rule,
		Reason: note.Reason(),
	})
}

// portRule reports whether an allow rule for this sandbox names host
// with port: credentials may then go to that port too (else only 443).
func (n *network) portRule(host string, port uint16) bool {
	return n.engine.Set().NamesPort(host, port, n.sandboxID)
}

// TCP implements netstack.FlowHandler: web ports go to the transparent
// proxy; any other port is forwarded only when a rule allows the name or
// address, else reset.
func (n *network) TCP(ctx context.Context, f netstack.FlowInfo) netstack.TCPAction {
	dst := f.Dst
	if !n.acquireFlow() {
		return netstack.Reject()
	}
	accepted := false
	defer func() {
		if !accepted {
			n.releaseFlow()
		}
	}()
	// The flow counts until the netstack is done with it, however it ends.
	accept := func(h func(net.Conn)) netstack.TCPAction {
		accepted = true
		return netstack.Accept(h).WithDone(n.releaseFlow)
	}
	if dst.Port() == 80 || dst.Port() == 443 {
		return accept(func(c net.Conn) { n.proxy.HandleConn(ctx, c, dst) })
	}
	ip := dst.Addr()
	names := n.names.NamesFor(ip)
	real := ip
	if netstack.IsSynthetic(ip) {
		r, nm, ok := n.names.RealAddr(ip)
		if !ok {
			n.logFlow("", ip, dst.Port(), false, "", "address from the synthetic range that no DNS answer gave out")
			return netstack.Reject()
		}
		real, names = r, []string{nm}
	}
	name, d := n.decideRaw(names, real, dst.Port())
	n.logFlow(name, real, dst.Port(), d.Allow, ruleText(d), d.Reason)
	if !d.Allow {
		return netstack.Reject()
	}
	target := netip.AddrPortFrom(real, dst.Port()).String()
	return accept(func(c net.Conn) {
		up, err := n.dial(ctx, "tcp", target)
		if err != nil {
			n.log.Debug("forward dial", "target", target, "err", err)
			return
		}
		defer up.Close()
		pipe(ctx, c, up)
	})
}

// decideRaw judges plain TCP to ip:port, known by the names the resolver
// gave out for ip (several when a CDN shares addresses). Any deny rule
// matching one of them wins; else one allowing name suffices. Each name is
// judged with the real address, as the proxy judges it.
func (n *network) decideRaw(names []string, ip netip.Addr, port uint16) (string, policy.Decision) {
	if len(names) == 0 {
		names = []string{""}
	}
	var allowName string
	var allow, deny *policy.Decision
	for _, name := range names {
		d := n.judge(name, ip, port)
		switch {
		case !d.Allow && d.Rule != nil:
			return name, d
		case d.Allow && allow == nil:
			allow, allowName = &d, name
		case !d.Allow && deny == nil:
			deny = &d
		}
	}
	if allow != nil {
		return allowName, *allow
	}
	return names[0], *deny
}

func (n *network) logFlow(host string, ip netip.Addr, port uint16, allowed bool, rule, reason string) {
	n.audit.Log(audit.Event{
		Time: time.Now(), Sandbox: n.sandboxName, SandboxID: n.sandboxID, Host: host, IP: ip, Port: port,
		Path: audit.PathNetwork, Proto: audit.ProtoTCP, Allowed: allowed, Rule: rule, Reason: reason,
	})
}

// Dropped implements netstack.FlowHandler; one event per destination and
// protocol per second keeps a flood from filling the disk.
func (n *network) Dropped(f netstack.FlowInfo, proto string) {
	key := proto + " " + f.Dst.String()
	now := time.Now()
	n.dropMu.Lock()
	if last, ok := n.lastDrop[key]; ok && now.Sub(last) < time.Second {
		n.dropMu.Unlock()
		return
	}
	if len(n.lastDrop) > 4096 {
		clear(n.lastDrop)
	}
	n.lastDrop[key] = now
	n.dropMu.Unlock()
	name, _ := n.names.NameFor(f.Dst.Addr())
	n.audit.Log(audit.Event{
		Time: now, Sandbox: n.sandboxName, SandboxID: n.sandboxID, Host: name, IP: f.Dst.Addr(), Port: f.Dst.Port(),
		Path: audit.PathNetwork, Proto: proto, Reason: proto + " is not forwarded",
	})
}

// DNSFlow implements netstack.DNSFlowCounter: a TCP connection to the
// DNS server is a flow like any other.
func (n *network) DNSFlow() (func(), bool) {
	if !n.acquireFlow() {
		return nil, false
	}
	return n.releaseFlow, true
}

// acquireFlow counts a new guest connection, or refuses it (and says so,
// at most once a second) when the sandbox has maxFlows open.
func (n *network) acquireFlow() bool {
	if v := n.flows.Add(1); v > n.maxFlows {
		n.flows.Add(-1)
		n.limitHit("connections", fmt.Sprintf("it has %d open; new ones are refused until some close", n.maxFlows))
		return false
	} else if v > n.peak.Load() {
		n.peak.Store(v)
	}
	return true
}

// freeAfterFlows is the peak of flows after which the memory they used is
// handed back to the system once they are all closed.
const freeAfterFlows = 256

// freeDelay is how long after the last flow of a flood closed its memory is
// handed back: after the netstack's TIME-WAIT.
const freeDelay = 6 * time.Second

// releaseFlow uncounts a closed guest connection. When the last of a
// flood closes, the memory its buffers used is returned to the system.
func (n *network) releaseFlow() {
	if n.flows.Add(-1) != 0 || n.peak.Load() < freeAfterFlows || !n.freeing.CompareAndSwap(false, true) {
		return
	}
	// Once the stack dropped the closed endpoints (TIME-WAIT included).
	t := time.AfterFunc(freeDelay, func() {
		defer n.freeing.Store(false)
		n.peak.Store(n.flows.Load())
		// Two collections: pooled buffers survive the first one.
		runtime.GC()
		debug.FreeOSMemory()
	})
	n.dropMu.Lock()
	n.freeTimer = t
	n.dropMu.Unlock()
}

// limitHit reports that the sandbox hit a bound (what: "connections",
// "dns lookups", "synthetic addresses"), at most once a second per bound,
// in the supervisor log and the audit log.
func (n *network) limitHit(what, detail string) {
	now := time.Now()
	n.dropMu.Lock()
	key := "limit " + what
	if last, ok := n.lastDrop[key]; ok && now.Sub(last) < time.Second {
		n.dropMu.Unlock()
		return
	}
	n.lastDrop[key] = now
	n.dropMu.Unlock()
	msg := fmt.Sprintf("sandbox hit its limit of %s: %s", what, detail)
	n.log.Warn(msg, "sandbox", n.sandboxName)
	n.audit.Log(audit.Event{Time: now, Sandbox: n.sandboxName, SandboxID: n.sandboxID, Path: audit.PathNetwork, Reason: msg})
}

// limitListener counts the forward proxy's connections as flows.
type limitListener struct {
	net.Listener
	n *network
}

func (l limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !l.n.acquireFlow() {
			c.Close()
			continue
		}
		return &countedConn{Conn: c, release: l.n.releaseFlow}, nil
	}
}

type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// pipeGrace is how long pipe waits for the second direction to finish
// after the first one did.
const pipeGrace = 30 * time.Second

// pipe copies both ways between a and b. When one direction ends the other
// side's write half is closed; both are closed when the second direction
// ends, after pipeGrace, or when ctx ends, so no flow outlives its sandbox.
func pipe(ctx context.Context, a, b net.Conn) {
	closeBoth := func() {
		a.Close()
		b.Close()
	}
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	select {
	case <-done:
	case <-time.After(pipeGrace):
		closeBoth()
		<-done
	}
	closeBoth()
}

// hostAddresses lists the host's own addresses, which no host pattern may
// reach.
func hostAddresses() []netip.Prefix {
	var out []netip.Prefix
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Addr().BitLen()))
		}
	}
	return out
}
