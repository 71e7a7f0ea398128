package supervisor

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/netstack"
	"github.com/sbx-dev/sbx/internal/policy"
)

// sniServer accepts TLS and records the server name of every ClientHello.
func sniServer(t *testing.T) (addr string, names func() []string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_ = tls.Server(c, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
					mu.Lock()
					seen = append(seen, h.ServerName)
					mu.Unlock()
					return nil, errors.New("seen")
				}}).Handshake()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(seen) }
}

// helloTo sends a TLS ClientHello for sni over c (the handshake fails:
// the fake server only records the name).
func helloTo(c net.Conn, sni string) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_ = tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
}

// Review (gap 1, "one judgement for every path"): under the default
// balanced policy, with no rule at all, the guest reaches a host the
// policy denies (evil.example) at the address of an allowed CDN name
// (cdn-name.test is on Cloudflare, *.githubusercontent.com
// on Fastly; a CDN routes by SNI). The transparent path judges the SNI and
// refuses; a CONNECT to the allowed name on 443 is spliced without looking
// at the SNI, and raw TCP to that address on any other port (Cloudflare
// serves every zone on 8443, 2053, 2083, 2087, 2096) is allowed by the
// portless built-in entry.
func TestTunnelJudgesServerName(t *testing.T) {
	cdn, sniSeen := sniServer(t)
	const ip = "203.0.113.7" // a documentation address standing for a CDN's; the dial seam routes it to a local server
	route := map[string]string{ip + ":443": cdn, ip + ":8443": cdn}
	f := newNetFixture(t, ip+" cdn-name.test\n", policy.PresetDenyAll, []string{"allow cdn-name.test"}, route)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	dst := netip.MustParseAddr(ip)
	if got := f.lookup(t, "cdn-name.test"); got != dst {
		t.Fatalf("dns gave %v", got)
	}

	// Transparent 443 with SNI evil.example: refused (the reference answer).
	c, err := f.guest.DialTCP(ctx, netip.AddrPortFrom(dst, 443))
	if err != nil {
		t.Fatal(err)
	}
	helloTo(c, "evil.example")
	c.Close()
	if slices.Contains(sniSeen(), "evil.example") {
		t.Fatalf("transparent path let evil.example through")
	}

	// Forward proxy CONNECT to the allowed name, then SNI evil.example.
	for _, port := range []int{443, 8443} {
		c, err = f.guest.DialTCP(ctx, netip.AddrPortFrom(netstack.DefaultGateway, ProxyPort))
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "CONNECT cdn-name.test:%d HTTP/1.1\r\nHost: cdn-name.test:%d\r\n\r\n", port, port)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			helloTo(c, fmt.Sprintf("evil.example-%d", port))
		}
		c.Close()
	}
	// Raw TCP to the same address on 8443.
	c, err = f.guest.DialTCP(ctx, netip.AddrPortFrom(dst, 8443))
	if err == nil {
		helloTo(c, "evil.example-raw")
		c.Close()
	}
	time.Sleep(200 * time.Millisecond)
	for _, name := range []string{"evil.example-443", "evil.example-8443", "evil.example-raw"} {
		if slices.Contains(sniSeen(), name) {
			t.Errorf("a TLS session for %s (denied by policy) reached the CDN address", name)
		}
	}
}

// Review (gap 1): a rule that names no host, "allow **:2375" (every name
// on that port, never a local address without SBX_HOSTS_FILE), opens the
// host's loopback port 2375 to any name the hosts file maps there:
// EvaluateMapped takes any allow rule with a port as "the rule names this
// very port", though NamesPort refuses ** for the same question.
func TestWildcardPortRuleNeverOpensMappedLoopback(t *testing.T) {
	escape, hits := echoServer(t)
	route := map[string]string{"127.0.0.1:2375": escape}
	for _, rule := range []string{"allow **:2375"} {
		f := newNetFixture(t, "127.0.0.1 portless.test\n", policy.PresetBalanced, []string{rule}, route)
		before := hits()
		code := f.viaProxy(t, "GET http://portless.test:2375/ HTTP/1.1", "portless.test:2375")
		// Without the hosts file the same rule never reaches loopback:
		code2 := f.viaProxy(t, "GET http://127.0.0.1:2375/ HTTP/1.1", "127.0.0.1:2375")
		if code == http.StatusOK || hits() > before {
			t.Errorf("%q: portless.test:2375 (127.0.0.1, mapped) answered %d; 127.0.0.1:2375 answered %d", rule, code, code2)
		}
	}
}
