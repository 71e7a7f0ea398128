package policy

import (
	"strings"
	"testing"
)

// Found by the twelfth outside review; fails on the code before its fix.
// `sbx policy allow network héllo.com` said "host name has character 'Ã'":
// the first byte of é's UTF-8, quoted as a character. The message names
// the character typed and gives the punycode form DNS knows the name by.
func TestHostNameNonASCII(t *testing.T) {
	for _, c := range []struct{ in, want, wantAlso string }{
		{"héllo.com", `'é'`, "xn--hllo-bpa.com"},
		{"*.münchen.de", `'ü'`, "xn--mnchen-3ya.de"},
		{"bücher.example:8443", `'ü'`, "xn--bcher-kva.example"},
		{"日本.jp", `'日'`, "xn--wgv71a.jp"},
		{"a☃.com", `'☃'`, "U+2603"},
		{"ex!ample.com", `'!'`, "only letters"},
		{"a\xffb.com", "at 1", "not UTF-8"},
	} {
		_, err := ParseResource(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.wantAlso) {
			t.Errorf("ParseResource(%q) = %v, want %s and %s", c.in, err, c.want, c.wantAlso)
		}
		if err != nil && strings.Contains(err.Error(), "Ã") {
			t.Errorf("ParseResource(%q) quotes a byte of UTF-8: %v", c.in, err)
		}
	}
	// A symbol has no punycode suggestion (IDNA does not allow it).
	if _, err := ParseResource("a☃.com"); err == nil || strings.Contains(err.Error(), "xn--") {
		t.Errorf("symbol: %v", err)
	}
	// The suggested form is accepted.
	if _, err := ParseResource("xn--hllo-bpa.com"); err != nil {
		t.Errorf("punycode form refused: %v", err)
	}
}
