package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/secrets"
)

// Benchmarks compare the same loopback HTTPS server reached directly and
// through the proxy. Each measures its direct baseline in the same run and
// reports the proxied/direct throughput ratio as "x-direct" (1.0 is free,
// 0.5 is half as fast), plus a log line.

// benchSetup is a proxy env plus a direct client and a proxied client for
// the upstream HTTPS server (api.test).
type benchSetup struct {
	e       *env
	direct  *http.Client
	proxied *http.Client
	base    string // https://api.test:PORT
}

func newBenchSetup(b *testing.B, terminate bool) *benchSetup {
	b.Helper()
	testCAs(b)
	var o envOptions
	roots := upstreamPool
	if terminate {
		o.intercept = interceptAPI
		roots = proxyPool
	}
	e := newEnv(b, o)
	tlsAddr := e.up.tls.Listener.Addr().String()
	var d net.Dialer
	tr := &http.Transport{
		DialContext:     func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp", tlsAddr) },
		TLSClientConfig: &tls.Config{RootCAs: upstreamPool, NextProtos: []string{"http/1.1"}},
	}
	b.Cleanup(tr.CloseIdleConnections)
	return &benchSetup{
		e:       e,
		direct:  &http.Client{Transport: tr},
		proxied: e.client(roots, false),
		base:    fmt.Sprintf("https://api.test:%d", port(b, e.up.tls)),
	}
}

// fetch GETs u and drains the body, returning the latency.
func fetch(ctx context.Context, c *http.Client, u string) (time.Duration, error) {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return time.Since(start), nil
}

// run performs n sequential requests on c (kept alive) and returns the
// total time and the median latency.
func run(b *testing.B, c *http.Client, u string, n int) (total, p50 time.Duration) {
	b.Helper()
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for range n {
		d, err := fetch(b.Context(), c, u)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, d)
	}
	total = time.Since(start)
	slices.Sort(lat)
	return total, lat[len(lat)/2]
}

func benchRequests(b *testing.B, terminate bool) {
	s := newBenchSetup(b, terminate)
	u := s.base + "/r"
	// Warm up: handshakes and leaf minting are not what is measured.
	run(b, s.direct, u, 20)
	run(b, s.proxied, u, 20)
	b.ResetTimer()
	directTotal, directP50 := run(b, s.direct, u, b.N)
	proxTotal, proxP50 := run(b, s.proxied, u, b.N)
	b.StopTimer()
	directRPS := float64(b.N) / directTotal.Seconds()
	proxRPS := float64(b.N) / proxTotal.Seconds()
	ratio := proxRPS / directRPS
	added := proxP50 - directP50
	b.ReportMetric(proxRPS, "req/s")
	b.ReportMetric(directRPS, "direct-req/s")
	b.ReportMetric(ratio, "x-direct")
	b.ReportMetric(float64(added.Nanoseconds())/1e3, "µs-added-p50")
	mode := "tunnelled"
	if terminate {
		mode = "terminated"
	}
	b.Logf("%s: %.0f req/s vs direct %.0f req/s = %.2fx direct; median latency %v vs %v direct (+%v); n=%d",
		mode, proxRPS, directRPS, ratio, proxP50, directP50, added, b.N)
}

// BenchmarkRequestsTunnelled: kept-alive HTTPS requests through a CONNECT
// tunnel vs direct (aim 0.8x; added median latency under 1 ms).
func BenchmarkRequestsTunnelled(b *testing.B) { benchRequests(b, false) }

// BenchmarkRequestsTerminated: kept-alive HTTPS requests through the
// terminating proxy (client TLS to the proxy, verified TLS upstream) vs
// direct (aim 0.5x).
func BenchmarkRequestsTerminated(b *testing.B) { benchRequests(b, true) }

// BenchmarkRequestsScanned: kept-alive HTTPS requests (16 KiB answers)
// to a host a secret is bound to, so the proxy terminates TLS, injects the
// secret and scans every answer for it, against the same requests direct
// and through the terminating proxy without secrets, in the same run (aim
// 0.5x direct).
func BenchmarkRequestsScanned(b *testing.B) {
	testCAs(b)
	store := secrets.NewStore(secrets.Options{Dir: b.TempDir()})
	ent, err := store.SetCustom(secrets.Custom{Env: "API_TOKEN", Hosts: []string{"api.test"}}, secrets.New("bench-REALVALUE-0123456789abcdef"))
	if err != nil {
		b.Fatal(err)
	}
	inj := secrets.NewInjector(store, "sb-bench", nil, nil)
	plain := newBenchSetup(b, true)
	e := newEnv(b, envOptions{intercept: inj.Intercept, hooks: &hooks{req: inj.ModifyRequest, resp: inj.ModifyResponse}})
	scanned := e.client(proxyPool, false)
	u := fmt.Sprintf("https://api.test:%d/big?n=%d", port(b, e.up.tls), 16<<10)
	du := plain.base + fmt.Sprintf("/big?n=%d", 16<<10)
	get := func(c *http.Client, u string, n int) time.Duration {
		start := time.Now()
		for range n {
			req, _ := http.NewRequestWithContext(b.Context(), http.MethodGet, u, nil)
			req.Header.Set("Authorization", "Bearer "+ent.Placeholder)
			resp, err := c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("GET %s: %s", u, resp.Status)
			}
		}
		return time.Since(start)
	}
	get(plain.direct, du, 20)
	get(plain.proxied, du, 20)
	get(scanned, u, 20)
	b.ResetTimer()
	direct := get(plain.direct, du, b.N)
	term := get(plain.proxied, du, b.N)
	scan := get(scanned, u, b.N)
	b.StopTimer()
	rps := func(d time.Duration) float64 { return float64(b.N) / d.Seconds() }
	b.ReportMetric(rps(scan), "req/s")
	b.ReportMetric(rps(direct), "direct-req/s")
	b.ReportMetric(rps(scan)/rps(direct), "x-direct")
	b.ReportMetric(rps(scan)/rps(term), "x-terminated")
	b.Logf("scanned: %.0f req/s vs direct %.0f (%.2fx) and terminated without secrets %.0f (%.2fx); n=%d",
		rps(scan), rps(direct), rps(scan)/rps(direct), rps(term), rps(scan)/rps(term), b.N)
}

const downloadBytes = 100 << 20 // 100 MiB

func benchDownload(b *testing.B, terminate bool) {
	s := newBenchSetup(b, terminate)
	u := fmt.Sprintf("%s/big?n=%d", s.base, downloadBytes)
	run(b, s.direct, s.base+"/r", 1)
	run(b, s.proxied, s.base+"/r", 1)
	b.SetBytes(downloadBytes)
	b.ResetTimer()
	directTotal, _ := run(b, s.direct, u, b.N)
	proxTotal, _ := run(b, s.proxied, u, b.N)
	b.StopTimer()
	mib := float64(downloadBytes) / (1 << 20) * float64(b.N)
	directRate, proxRate := mib/directTotal.Seconds(), mib/proxTotal.Seconds()
	ratio := proxRate / directRate
	b.ReportMetric(proxRate, "MiB/s")
	b.ReportMetric(directRate, "direct-MiB/s")
	b.ReportMetric(ratio, "x-direct")
	mode := "tunnelled"
	if terminate {
		mode = "terminated"
	}
	b.Logf("%s 100 MiB download: %.0f MiB/s vs direct %.0f MiB/s = %.2fx direct; n=%d", mode, proxRate, directRate, ratio, b.N)
}

// BenchmarkDownload100MiBTunnelled: a 100 MiB HTTPS download through a
// CONNECT tunnel vs direct (aim 0.8x).
func BenchmarkDownload100MiBTunnelled(b *testing.B) { benchDownload(b, false) }

// BenchmarkDownload100MiBTerminated: the same download through the
// terminating proxy.
func BenchmarkDownload100MiBTerminated(b *testing.B) { benchDownload(b, true) }

// TestTunnel500Concurrent holds 500 CONNECT tunnels open at once, each
// having completed a TLS handshake and a request with the upstream, and
// checks that none fails and that the heap stays bounded.
func TestTunnel500Concurrent(t *testing.T) {
	const n = 500
	e := newEnv(t, envOptions{})
	authority := fmt.Sprintf("api.test:%d", port(t, e.up.tls))
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	ctx := t.Context()
	var ready, wg sync.WaitGroup
	release := make(chan struct{})
	errs := make(chan error, n)
	ready.Add(n)
	for i := range n {
		wg.Go(func() {
			done := sync.OnceFunc(ready.Done)
			defer done()
			if err := oneTunnel(ctx, e.addr, authority, i, done, release); err != nil {
				errs <- fmt.Errorf("tunnel %d: %w", i, err)
			}
		})
	}
	ready.Wait()
	runtime.GC()
	var peak runtime.MemStats
	runtime.ReadMemStats(&peak)
	close(release)
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	if err := errors.Join(all...); err != nil {
		t.Fatalf("%d of %d tunnels failed: %v", len(all), n, err)
	}
	grow := int64(peak.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d concurrent tunnels (client, proxy and server in one process): heap in use grew %.1f MiB, %.1f KiB per tunnel", n, float64(grow)/(1<<20), float64(grow)/1024/n)
	if grow > 256<<20 {
		t.Errorf("heap grew %d MiB for %d tunnels", grow>>20, n)
	}
}

// oneTunnel opens a tunnel, does one request over TLS, reports ready, and
// holds the connection until release.
func oneTunnel(ctx context.Context, proxyAddr, authority string, i int, ready func(), release <-chan struct{}) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("CONNECT: %s", resp.Status)
	}
	tc := tls.Client(c, &tls.Config{RootCAs: upstreamPool, ServerName: "api.test", NextProtos: []string{"http/1.1"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	fmt.Fprintf(tc, "GET /c/%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, authority)
	resp, err = http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("hello GET /c/%d", i); string(body) != want {
		return fmt.Errorf("body %q, want %q", body, want)
	}
	ready()
	select {
	case <-release:
	case <-ctx.Done():
	}
	return nil
}
