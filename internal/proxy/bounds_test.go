package proxy

import (
	"io"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/secrets"
)

// Found by the second outside review: SBX_MAX_FLOWS counts guest connections, but one guest
// HTTP/2 connection to a terminated host carries up to 250 concurrent
// requests, each of which the proxy sends on its own upstream connection
// when the upstream speaks HTTP/1.1 (and on plain HTTP there is no pool
// bound either): the host-side connection count is unbounded by the flow
// limit (1024 guest flows -> ~256,000 host sockets).
func TestOneGuestFlowBoundedUpstreamConns(t *testing.T) {
	release := make(chan struct{})
	var inflight atomic.Int64
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		<-release
		io.WriteString(w, "ok")
	}), false)
	e.custom(t, reviewValue)
	c := e.client(true)
	var guestConns atomic.Int64
	const n = 200
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
				GotConn: func(ci httptrace.GotConnInfo) {
					if !ci.Reused {
						guestConns.Add(1)
					}
				},
			})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.test/slow", nil)
			resp, err := c.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	deadline := time.Now().Add(3 * time.Second)
	for inflight.Load() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	dials := e.dials.Load()
	close(release)
	wg.Wait()
	t.Logf("guest connections to the proxy: %d; upstream connections opened: %d", guestConns.Load(), dials)
	if guestConns.Load() <= 1 && dials > 64 {
		t.Errorf("one guest connection made the proxy open %d host-side connections at once", dials)
	}
}

// Found by the second outside review: every request to a host bound to a custom secret has its
// body (up to 1 MiB) buffered for substitution before it goes upstream.
// One guest HTTP/2 connection carries many such requests at once, so one
// counted flow pins hundreds of MiB in the supervisor (SBX_MAX_FLOWS x
// 250 streams x 1 MiB in all).
func TestOneGuestFlowBoundedBufferedBodies(t *testing.T) {
	release := make(chan struct{})
	var inflight atomic.Int64
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		<-release
		io.WriteString(w, "ok")
	}), true)
	ph := e.custom(t, reviewValue)
	body := strings.Repeat("x", secrets.MaxBodyBytes-len(ph)) + ph
	c := e.client(true)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const n = 200
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "https://api.test/upload", strings.NewReader(body))
			resp, err := c.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	deadline := time.Now().Add(3 * time.Second)
	for inflight.Load() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var during runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&during)
	close(release)
	wg.Wait()
	grew := int64(during.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d requests in flight on one guest connection; heap in use grew by %d MiB", inflight.Load(), grew>>20)
	if grew > 100<<20 {
		t.Errorf("one guest connection pinned %d MiB of request bodies in the proxy", grew>>20)
	}
}
