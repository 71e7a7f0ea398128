package supervisor

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sbx-dev/sbx/internal/audit"
	"github.com/sbx-dev/sbx/internal/netstack"
	"github.com/sbx-dev/sbx/internal/netstack/netstacktest"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// netFixture is one sandbox's network in process: the real policy engine,
// proxy, resolver and netstack, a fake guest on the netstack, and a dialer
// that records every address the network tries to reach on the host side.
type netFixture struct {
	n     *network
	guest *netstacktest.Guest

	mu      sync.Mutex
	reached []string // host-side addresses dialled, in order
	route   map[string]string
}

// newNetFixture builds the network with hosts as SBX_HOSTS_FILE and rules
// (policy resource specs: "allow NAME[:PORT]", "deny ...") over default.
// route maps an address the network may dial to the test server that
// stands for it.
func newNetFixture(t testing.TB, hosts string, def policy.Preset, rules []string, route map[string]string) *netFixture {
	t.Helper()
	return newNetFixtureLimits(t, hosts, def, rules, route, Limits{})
}

func newNetFixtureLimits(t testing.TB, hosts string, def policy.Preset, rules []string, route map[string]string, lim Limits) *netFixture {
	t.Helper()
	base := t.TempDir()
	cfgDir := filepath.Join(base, "config")
	hostsPath := filepath.Join(base, "hosts")
	if err := os.WriteFile(hostsPath, []byte(hosts), 0o600); err != nil {
		t.Fatal(err)
	}
	err := policy.NewStore(cfgDir).Update(func(f *policy.File) error {
		f.Default = def
		for _, r := range rules {
			action, spec, _ := strings.Cut(r, " ")
			res, err := policy.ParseResource(spec)
			if err != nil {
				return err
			}
			f.Rules = append(f.Rules, policy.NewRule(policy.Action(action), res, "", "", time.Now()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	store := sandbox.NewStore(paths.Dirs{Data: filepath.Join(base, "d"), Runtime: filepath.Join(base, "r")})
	sb, err := store.Create(sandbox.Config{ID: sandbox.NewID(), Name: "net", Agent: "shell", Workspaces: []sandbox.Workspace{{Path: t.TempDir()}}})
	if err == nil {
		err = store.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := newNetwork(ctx, sb, Boot{MAC: sandbox.NewMAC(), ConfigDir: cfgDir, HostsFile: hostsPath, Limits: lim}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	f := &netFixture{n: n, route: route}
	var d net.Dialer
	n.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		f.mu.Lock()
		f.reached = append(f.reached, addr)
		to, ok := f.route[addr]
		f.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("test: no server stands for %s", addr)
		}
		return d.DialContext(ctx, network, to)
	}
	if err := n.start(ctx, filepath.Join(base, "net.sock")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		n.close()
	})
	f.guest = netstacktest.Attach(t, n.stack, n.mac)
	return f
}

func (f *netFixture) reachedAny() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reached)
}

func (f *netFixture) resetReached() {
	f.mu.Lock()
	f.reached = nil
	f.mu.Unlock()
}

// lookup asks the sandbox's DNS server for name's A record, as the guest
// does, and returns the first answer (invalid when refused).
func (f *netFixture) lookup(t testing.TB, name string) netip.Addr {
	t.Helper()
	c, err := f.guest.DialUDP(netip.AddrPortFrom(netstack.DefaultGateway, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	co := &dns.Conn{Conn: c}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := co.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	r, err := co.ReadMsg()
	if err != nil {
		t.Fatalf("dns %s: %v", name, err)
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A.To4())
			return ip
		}
	}
	return netip.Addr{}
}

// viaProxy sends one request line to the forward proxy and returns the
// status code of its answer (0 when the connection failed).
func (f *netFixture) viaProxy(t testing.TB, line, host string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := f.guest.DialTCP(ctx, netip.AddrPortFrom(netstack.DefaultGateway, ProxyPort))
	if err != nil {
		t.Fatalf("dial the proxy: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s\r\nHost: %s\r\nConnection: close\r\n\r\n", line, host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// direct opens a connection from the guest to dst, as a program ignoring
// the proxy does (transparent proxy on 80 and 443, raw TCP elsewhere),
// sends an HTTP request naming host and reports whether an answer came
// back.
func (f *netFixture) direct(t testing.TB, dst netip.AddrPort, host string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := f.guest.DialTCP(ctx, dst)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// echoServer answers every HTTP request with 200 and records that it was
// reached.
func echoServer(t testing.TB) (addr string, hits func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		io.WriteString(w, "reached\n")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// TestOneJudgementEveryPath asks for the same target through every path
// the guest has (forward CONNECT, forward absolute-form, transparent,
// raw TCP) and expects one answer, and nothing on the host side reached
// unless that answer is allow. The escape target stands for a service on
// the host's loopback (a Docker daemon on 2375, another sandbox's
// published port).
func TestOneJudgementEveryPath(t *testing.T) {
	escape, escapeHits := echoServer(t)
	allowed, allowedHits := echoServer(t)
	const escapePort, allowedPort = "2375", "8443"
	route := map[string]string{
		"127.0.0.1:" + escapePort:  escape,
		"127.0.0.1:" + allowedPort: allowed,
		"127.0.0.1:80":             allowed, // a mapped name's web port
		"[::1]:" + escapePort:      escape,
	}
	hosts := "127.0.0.1 portless.test ported.test\n::1 six.test\n"
	f := newNetFixture(t, hosts, policy.PresetBalanced, []string{
		"allow portless.test", "allow ported.test:" + allowedPort, "allow six.test",
	}, route)

	type path int
	const (
		connect path = iota
		absolute
		raw
	)
	pathName := []string{"CONNECT", "absolute-form", "raw TCP"}
	for _, c := range []struct {
		host, port string
		want       bool
	}{
		{"portless.test", escapePort, false}, // gap 1: a portless rule opened every loopback port
		{"PORTLESS.test.", escapePort, false},
		{"ported.test", allowedPort, true},
		{"ported.test", escapePort, false},
		{"six.test", escapePort, false},
		{"localhost", escapePort, false},
		{"host.sbx.internal", escapePort, false},
		{"127.0.0.1", escapePort, false},
		{"127.1", escapePort, false},
		{"0x7f000001", escapePort, false},
		{"[::1]", escapePort, false},
		{"[::ffff:127.0.0.1]", escapePort, false},
	} {
		for _, p := range []path{connect, absolute, raw} {
			name := fmt.Sprintf("%s %s:%s", pathName[p], c.host, c.port)
			f.resetReached()
			before := escapeHits() + allowedHits()
			var ok bool
			switch p {
			case connect:
				authority := net.JoinHostPort(strings.Trim(c.host, "[]"), c.port)
				ok = f.viaProxy(t, "CONNECT "+authority+" HTTP/1.1", authority) == http.StatusOK
			case absolute:
				authority := net.JoinHostPort(strings.Trim(c.host, "[]"), c.port)
				ok = f.viaProxy(t, "GET http://"+authority+"/ HTTP/1.1", authority) == http.StatusOK
			case raw:
				// The guest reaches a name by the address its DNS answer
				// gave; an IP literal goes out as it is.
				var ip netip.Addr
				if a, err := netip.ParseAddr(strings.Trim(c.host, "[]")); err == nil {
					ip = a
				} else if strings.HasSuffix(strings.ToLower(strings.TrimSuffix(c.host, ".")), ".test") {
					ip = f.lookup(t, c.host)
				}
				if !ip.IsValid() || !ip.Is4() || ip.IsLoopback() {
					// The guest's own loopback never leaves the VM, and a
					// name the resolver refuses cannot be dialled.
					continue
				}
				var port uint16
				fmt.Sscan(c.port, &port)
				ok = f.direct(t, netip.AddrPortFrom(ip, port), c.host)
			}
			reached := f.reachedAny()
			hits := escapeHits() + allowedHits() - before
			if ok != c.want || (!c.want && (len(reached) > 0 || hits > 0)) {
				t.Errorf("%s: answered=%v, want %v; host side reached %v (%d requests)", name, ok, c.want, reached, hits)
			}
		}
	}

	// Transparent proxy: a program that ignores the proxy settings and
	// connects to the mapped name's address on 80. A portless rule opens
	// the web ports of a mapped name (documented); a rule with another
	// port does not.
	for _, c := range []struct {
		host string
		want bool
	}{
		{"portless.test", true},
		{"ported.test", false},
		{"localhost", false},
		{"127.0.0.1", false},
	} {
		ip := f.lookup(t, "portless.test") // any synthetic address: the Host header names the target
		f.resetReached()
		ok := f.direct(t, netip.AddrPortFrom(ip, 80), c.host)
		reached := f.reachedAny()
		if ok != c.want || (!c.want && len(reached) > 0) {
			t.Errorf("transparent %s:80: answered=%v, want %v; host side reached %v", c.host, ok, c.want, reached)
		}
	}
}

// Gap 8: a sandbox holds at most Limits.Flows connections at once, on
// every path together; the next one is refused and the log says so; once
// some close, new ones work again.
func TestFlowLimit(t *testing.T) {
	upstream, _ := echoServer(t)
	f := newNetFixtureLimits(t, "127.0.0.1 ported.test\n", policy.PresetDenyAll,
		[]string{"allow ported.test:8443"}, map[string]string{"127.0.0.1:8443": upstream}, Limits{Flows: 4})
	ip := f.lookup(t, "ported.test")
	dst := netip.AddrPortFrom(ip, 8443)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var held []net.Conn
	// Two raw flows and two forward-proxy connections: four in all.
	for _, to := range []netip.AddrPort{dst, dst, netip.AddrPortFrom(netstack.DefaultGateway, ProxyPort), netip.AddrPortFrom(netstack.DefaultGateway, ProxyPort)} {
		c, err := f.guest.DialTCP(ctx, to)
		if err != nil {
			t.Fatalf("connection %d under the limit: %v", len(held)+1, err)
		}
		held = append(held, c)
	}
	for deadline := time.Now().Add(5 * time.Second); f.n.flows.Load() < 4; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("flows = %d, want 4", f.n.flows.Load())
		}
	}
	if c, err := f.guest.DialTCP(ctx, dst); err == nil {
		c.Close()
		t.Error("a fifth raw connection was accepted over the limit of 4")
	}
	// The forward proxy takes it and closes it at once.
	if c, err := f.guest.DialTCP(ctx, netip.AddrPortFrom(netstack.DefaultGateway, ProxyPort)); err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("a fifth proxy connection was served over the limit")
		}
		c.Close()
	}
	if err := f.n.audit.Flush(); err != nil {
		t.Fatal(err)
	}
	evs, _ := audit.ReadFile(f.n.audit.Path(), 0)
	found := false
	for _, ev := range evs {
		found = found || strings.Contains(ev.Reason, "limit of connections")
	}
	if !found {
		t.Error("no audit line says the limit was hit")
	}
	for _, c := range held {
		c.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); f.n.flows.Load() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("flows = %d after every connection closed", f.n.flows.Load())
		}
	}
	if !f.direct(t, dst, "ported.test") {
		t.Error("no new connection once the others closed")
	}
}

// rss is this process's resident memory in bytes.
func rss(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

// BenchmarkFlowMemory: the memory of one sandbox's network (and, in this
// process, of the fake guest) after 2,000 guest connections were opened,
// held and closed, against its idle level measured first in the same run
// (aim 1.5x; the isolation review saw ~108 MiB kept after such a flood).
// The clients close cleanly; flows whose peers vanish without a word end
// within pipeGrace.
func BenchmarkFlowMemory(b *testing.B) {
	upstream, _ := echoServer(b)
	f := newNetFixture(b, "127.0.0.1 ported.test\n", policy.PresetDenyAll,
		[]string{"allow ported.test:8443"}, map[string]string{"127.0.0.1:8443": upstream})
	dst := netip.AddrPortFrom(f.lookup(b, "ported.test"), 8443)
	// After TIME-WAIT (5 s here) and the supervisor's own hand-back.
	settle := func() int64 {
		time.Sleep(freeDelay + 2*time.Second)
		runtime.GC()
		return rss(b)
	}
	idle := settle()
	var peak int64
	b.ResetTimer()
	for range b.N {
		// Two waves of 1,000 held at once: the default limit is 1,024.
		for range 2 {
			var wg sync.WaitGroup
			conns := make(chan net.Conn, 1000)
			for range 1000 {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(b.Context(), 30*time.Second)
					defer cancel()
					if c, err := f.guest.DialTCP(ctx, dst); err == nil {
						fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: ported.test\r\nConnection: close\r\n\r\n")
						conns <- c
					}
				})
			}
			wg.Wait()
			close(conns)
			peak = max(peak, rss(b))
			// Each client reads its answer to the end, then closes, as
			// HTTP clients do (an abrupt close is bounded by pipeGrace).
			var rg sync.WaitGroup
			for c := range conns {
				rg.Go(func() {
					c.SetReadDeadline(time.Now().Add(30 * time.Second))
					io.Copy(io.Discard, c)
					c.Close()
				})
			}
			rg.Wait()
		}
	}
	b.StopTimer()
	after := settle()
	if p := os.Getenv("SBX_BENCH_HEAP"); p != "" {
		hf, _ := os.Create(p)
		pprof.WriteHeapProfile(hf)
		hf.Close()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.Logf("after: heap in use %d MiB, heap idle not returned %d MiB, stacks %d MiB, runtime total %d MiB, %d goroutines",
		ms.HeapInuse>>20, (ms.HeapIdle-ms.HeapReleased)>>20, ms.StackSys>>20, ms.Sys>>20, runtime.NumGoroutine())
	b.ReportMetric(float64(idle)/(1<<20), "idle-MiB")
	b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
	b.ReportMetric(float64(after)/(1<<20), "after-MiB")
	b.ReportMetric(float64(after)/float64(idle), "x-idle")
	b.Logf("memory: idle %.1f MiB, peak %.1f MiB with 1,000 connections held, %.1f MiB after 2,000 closed = %.2fx idle",
		float64(idle)/(1<<20), float64(peak)/(1<<20), float64(after)/(1<<20), float64(after)/float64(idle))
}
