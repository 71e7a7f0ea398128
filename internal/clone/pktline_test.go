package clone

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func pkt(s string) string { return fmt.Sprintf("%04x%s", len(s)+4, s) }

// Found by the eighth outside review; fails on the code before its fix.
// The guest's upload-pack (a packObjectsHook in its /etc/gitconfig)
// wrote escape sequences as sideband progress, and the host's git put
// them on the user's terminal as "remote: ...". Progress, errors and ERR
// packets are escaped; pack data and protocol lines are not touched.
func TestFilterPackets(t *testing.T) {
	esc := func(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\x1b"), []byte(`\x1b`)) }
	pack := "\x01PACK\x1b\x00\x00\x00\x02"
	in := pkt("0123 refs/heads/main\x00caps\n") + "0000" + pkt("NAK\n") +
		pkt(pack) + pkt("\x02\x1b]0;PWNED\aCounting\r") + pkt("\x03\x1b[2Jfatal") + pkt("ERR \x1b[31mno") + "0001" + "0002" + "0000"
	var out bytes.Buffer
	if err := FilterPackets(&out, strings.NewReader(in), esc); err != nil {
		t.Fatal(err)
	}
	want := pkt("0123 refs/heads/main\x00caps\n") + "0000" + pkt("NAK\n") +
		pkt(pack) + pkt("\x02\\x1b]0;PWNED\aCounting\r") + pkt("\x03\\x1b[2Jfatal") + pkt("ERR \\x1b[31mno") + "0001" + "0002" + "0000"
	if out.String() != want {
		t.Errorf("filtered\n%q\nwant\n%q", out.String(), want)
	}
	// A progress message that grows past one packet is split.
	big := pkt("\x02" + strings.Repeat("\x1b", maxPktPayload-1))
	out.Reset()
	if err := FilterPackets(&out, strings.NewReader(big), esc); err != nil {
		t.Fatal(err)
	}
	if out.Len() <= len(big) || strings.Contains(out.String(), "\x1b") {
		t.Errorf("split: %d bytes, escape left: %v", out.Len(), strings.Contains(out.String(), "\x1b"))
	}
	for _, bad := range []string{"zzzz", "0003", "fff0" + strings.Repeat("x", 10)} {
		if err := FilterPackets(&out, strings.NewReader(bad), esc); err == nil {
			t.Errorf("%q passed", bad)
		}
	}
}
