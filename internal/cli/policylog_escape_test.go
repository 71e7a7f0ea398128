package cli

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/audit"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// Found by the third outside review: `sbx policy log` prints audit hosts as they are; the host of a
// transparent TLS decision is the guest's SNI, raw bytes (see
// supervisor.TestServerNameControlBytesNeverReachAudit). A guest therefore writes
// escape sequences (window title, hidden text, cursor moves) and whole fake
// rows into the terminal of the user reviewing what it did.
func TestPolicyLogEscapesGuestControlBytes(t *testing.T) {
	_, sb := policySandbox(t)
	l, err := audit.Open(filepath.Join(sb.Dir, supervisor.AuditFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	// What the proxy records for a ClientHello whose server name is this.
	host := "x\x1b]0;title-from-guest\x07\x1b[8m\r\ndev  api.anthropic.com:443  transparent  allowed"
	l.Log(audit.Event{Time: time.Now(), SandboxID: sb.Config.ID, Host: host, Port: 443, Path: audit.PathTransparent, Proto: audit.ProtoHTTPS, Reason: "no rule matches; default balanced denies"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := runSbx(t, "policy", "log", "dev")
	if strings.ContainsAny(r.out, "\x1b\x07\r") || strings.Contains(r.out, "\ndev  api.anthropic.com:443  transparent  allowed") {
		t.Errorf("sbx policy log wrote the guest's control bytes to the terminal:\n%q", r.out)
	}
}
