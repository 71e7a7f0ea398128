package supervisor

import (
	"context"
	"crypto/tls"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/audit"
	"github.com/sbx-dev/sbx/internal/policy"
)

// Found by the third outside review; fails on the code before its fix.
// The TLS server name is taken from the guest's ClientHello as
// raw bytes (crypto/tls only refuses a trailing dot) and written, lower-cased
// but otherwise as sent, into the audit log as the event's host. ESC, BEL,
// CR and LF come out of audit.ReadFile intact, and `sbx policy log` prints
// the host to the user's terminal (see the cli test), so any process in the
// guest writes terminal control sequences and fake table rows there.
func TestServerNameControlBytesNeverReachAudit(t *testing.T) {
	f := newNetFixture(t, "", policy.PresetBalanced, nil, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	const sni = "x\x1b]0;title-from-guest\x07\x1b[8m\r\nnet  api.anthropic.com:443  transparent  allowed"
	c, err := f.guest.DialTCP(ctx, netip.MustParseAddrPort("93.184.215.14:443"))
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_ = tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
	c.Close()
	time.Sleep(200 * time.Millisecond)
	if err := f.n.audit.Flush(); err != nil {
		t.Fatal(err)
	}
	evs, err := audit.ReadFile(f.n.audit.Path(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if strings.ContainsAny(ev.Host, "\x1b\x07\r\n") {
			t.Errorf("audit event host carries control bytes from the guest: %q", ev.Host)
		}
	}
}
