package supervisor

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sbx-dev/sbx/internal/netstack"
	"github.com/sbx-dev/sbx/internal/policy"
)

// Found by the third outside review; fails on the code before its fix.
// DNS over TCP to the gateway is served
// by a listener inside the netstack, not through the flow handler, so its
// connections are not counted in SBX_MAX_FLOWS: with a limit of 4, a guest
// holds 40 live TCP connections to gateway:53, each answering queries.
func TestDNSOverTCPCountedInFlows(t *testing.T) {
	f := newNetFixtureLimits(t, "127.0.0.1 ported.test\n", policy.PresetDenyAll,
		[]string{"allow ported.test:8443"}, nil, Limits{Flows: 4})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	const want = 40
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range want {
		c, err := f.guest.DialTCP(ctx, netip.AddrPortFrom(netstack.DefaultGateway, 53))
		if err != nil {
			break
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		dc := &dns.Conn{Conn: c}
		q := new(dns.Msg)
		q.SetQuestion("ported.test.", dns.TypeA)
		if err := dc.WriteMsg(q); err != nil {
			c.Close()
			break
		}
		if _, err := dc.ReadMsg(); err != nil {
			c.Close()
			break
		}
		held = append(held, c)
	}
	if len(held) > 4 {
		t.Errorf("with SBX_MAX_FLOWS=4 the guest holds %d live DNS-over-TCP connections (flows counted: %d)", len(held), f.n.flows.Load())
	}
}
