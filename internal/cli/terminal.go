package cli

import (
	"io"
	"strconv"
	"unicode/utf8"
)

// What the guest wrote (its console, names and reasons in the audit log)
// reaches the user's terminal only through these: a guest must not send
// it escape sequences (OSC 52 sets the clipboard, CSI clears the screen or
// hides text, a bare CR overwrites what a line said) nor forge lines.

// safeRune reports whether r may go to a terminal as it is. keepLines
// keeps \n and \t (a log's layout); fields keep neither.
func safeRune(r rune, keepLines bool) bool {
	if keepLines && (r == '\n' || r == '\t') {
		return true
	}
	return strconv.IsPrint(r)
}

// appendEscaped appends the escape of the unsafe rune r (size bytes of
// b): as strconv.Quote writes it, without the quotes (\x1b, \a, \r,
// \u0085, \u202e; \xff for a byte that is not UTF-8).
func appendEscaped(dst, b []byte) []byte {
	q := strconv.Quote(string(b))
	return append(dst, q[1:len(q)-1]...)
}

// appendTerminalSafe appends b to dst as safe for a terminal: printable
// UTF-8, \n and \t as they are; a \r right before \n is dropped, so the
// serial console's CRLF line endings read as lines; every other control
// character (C0 including ESC, BEL and a lone \r; DEL; C1 U+0080-U+009F),
// other non-printable rune (bidirectional overrides...) and byte that is
// not UTF-8 is written as a visible escape such as \x1b. A rune cut at
// the end of b is escaped too: streams go through terminalWriter, which
// keeps it for the next write.
func appendTerminalSafe(dst, b []byte) []byte {
	for i := 0; i < len(b); {
		c := b[i]
		if c == '\r' && i+1 < len(b) && b[i+1] == '\n' {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			if safeRune(rune(c), true) {
				dst = append(dst, c)
			} else {
				dst = appendEscaped(dst, b[i:i+1])
			}
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			dst = appendEscaped(dst, b[i:i+1])
			i++
			continue
		}
		if safeRune(r, true) {
			dst = append(dst, b[i:i+n]...)
		} else {
			dst = appendEscaped(dst, b[i:i+n])
		}
		i += n
	}
	return dst
}

// terminalField is s as safe for one field of a line (a table cell):
// unchanged when every rune is printable, else quoted like strconv.Quote,
// so control characters, tabs, newlines, invalid UTF-8 and format
// characters show as escapes and cannot forge rows or columns.
func terminalField(s string) string {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, n := utf8.DecodeRuneInString(s[i:]); n <= 1 {
				return strconv.Quote(s)
			}
		}
		if !safeRune(r, false) {
			return strconv.Quote(s)
		}
	}
	return s
}

// terminalWriter writes what it is given through appendTerminalSafe,
// holding back a UTF-8 sequence or a \r cut at the end of a write until
// the next one (or Flush) completes it.
type terminalWriter struct {
	w     io.Writer
	carry []byte
	buf   []byte
}

func (t *terminalWriter) Write(p []byte) (int, error) {
	data := append(t.carry, p...)
	cut := len(data)
	// A rune's first bytes, without the rest.
	for k := 1; k <= utf8.UTFMax-1 && k <= cut; k++ {
		if utf8.RuneStart(data[cut-k]) {
			if !utf8.FullRune(data[cut-k:]) {
				cut -= k
			}
			break
		}
	}
	if cut > 0 && data[cut-1] == '\r' {
		cut--
	}
	t.buf = appendTerminalSafe(t.buf[:0], data[:cut])
	t.carry = append(t.carry[:0:0], data[cut:]...)
	if _, err := t.w.Write(t.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what Write held back.
func (t *terminalWriter) Flush() error {
	if len(t.carry) == 0 {
		return nil
	}
	t.buf = appendTerminalSafe(t.buf[:0], t.carry)
	t.carry = nil
	_, err := t.w.Write(t.buf)
	return err
}
