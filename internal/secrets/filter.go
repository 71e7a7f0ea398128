package secrets

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"
)

// BlockedError is why the proxy refused to send a request: it carried the
// real value of a secret where that value must not go. It never holds the
// value.
type BlockedError struct {
	Secret string // service name or custom secret's variable
	Where  string // "header NAME", "url", "body"
	Host   string
	Why    string // "it is not bound to that host", "plain HTTP"
}

func (e *BlockedError) Error() string { return "sbx proxy: " + e.BlockedReason() }

// BlockedReason is the one-line explanation for the 403 page and the
// audit log.
func (e *BlockedError) BlockedReason() string {
	return fmt.Sprintf("request blocked: its %s carries the real value of secret %s to %s (%s)", e.Where, e.Secret, e.Host, e.Why)
}

// refusedError is a response the proxy would not hand on; BlockedReason
// makes the proxy answer 403 with it.
type refusedError string

func (e refusedError) Error() string         { return "sbx proxy: " + string(e) }
func (e refusedError) BlockedReason() string { return string(e) }

// form is one spelling of a secret value as it may appear on the wire and
// what replaces it in a scrubbed response.
type form struct {
	enc, repl []byte
}

// encodedForms lists the spellings of value a request or response may
// carry: raw, URL-encoded (query and path), and base64 (standard and URL
// alphabets, padded or not) at each of the three alignments, so the value
// is found inside a longer base64 text such as Basic credentials
// ("user:VALUE"). repl, when not empty, is encoded the same way as each
// form's replacement. Forms shorter than minValueScan are left out.
func encodedForms(value, repl string) []form {
	var out []form
	add := func(enc, r string) {
		if len(enc) < minValueScan {
			return
		}
		for _, f := range out {
			if string(f.enc) == enc {
				return
			}
		}
		out = append(out, form{enc: []byte(enc), repl: []byte(r)})
	}
	add(value, repl)
	add(url.QueryEscape(value), url.QueryEscape(repl))
	add(url.PathEscape(value), url.PathEscape(repl))
	add(lowerPercent(url.QueryEscape(value)), lowerPercent(url.QueryEscape(repl)))
	add(lowerPercent(url.PathEscape(value)), lowerPercent(url.PathEscape(repl)))
	// JSON: "\/" (as PHP writes a slash), and \u00xx escapes as Go's and
	// .NET's encoders write them, or of every punctuation character.
	add(strings.ReplaceAll(value, "/", `\/`), strings.ReplaceAll(repl, "/", `\/`))
	for _, set := range []string{goJSONEscapes, dotnetJSONEscapes, allPunct} {
		for _, upper := range []bool{false, true} {
			add(jsonEscape(value, set, upper), jsonEscape(repl, set, upper))
		}
	}
	add(hex.EncodeToString([]byte(value)), hex.EncodeToString([]byte(repl)))
	add(strings.ToUpper(hex.EncodeToString([]byte(value))), strings.ToUpper(hex.EncodeToString([]byte(repl))))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for k := range 3 {
			add(base64Inner(enc, value, k), base64Inner(enc, repl, k))
		}
	}
	return out
}

// lowerPercent writes the hex digits of every %XX escape in lower case.
func lowerPercent(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1] = lowerHex(b[i+1])
			b[i+2] = lowerHex(b[i+2])
			i += 2
		}
	}
	return string(b)
}

func lowerHex(c byte) byte {
	if c >= 'A' && c <= 'F' {
		return c + 'a' - 'A'
	}
	return c
}

// Characters JSON encoders write as \u00xx: Go's encoding/json, .NET's
// System.Text.Json default encoder, and allPunct for every ASCII
// character that is not a letter or digit.
const (
	goJSONEscapes     = "<>&"
	dotnetJSONEscapes = "<>&'\"+`"
	allPunct          = "all"
)

// jsonEscape spells s as JSON string content with the characters of set
// written as \u00xx (hex digits in upper case when upper).
func jsonEscape(s, set string, upper bool) string {
	const lo, up = "0123456789abcdef", "0123456789ABCDEF"
	digits := lo
	if upper {
		digits = up
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		esc := strings.IndexByte(set, c) >= 0
		if set == allPunct {
			esc = c < 0x80 && !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z')
		}
		if esc {
			b.WriteString(`\u00`)
			b.WriteByte(digits[c>>4])
			b.WriteByte(digits[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// base64Inner is the part of the base64 encoding of s, preceded by k
// other bytes, that depends on s alone: the same characters whatever
// bytes surround s.
func base64Inner(enc *base64.Encoding, s string, k int) string {
	if s == "" {
		return ""
	}
	full := enc.WithPadding(base64.NoPadding).EncodeToString(append(make([]byte, k), s...))
	first := (8*k + 5) / 6       // first character wholly inside s
	last := 8 * (k + len(s)) / 6 // characters ending at or before s's end
	if first >= last || last > len(full) {
		return ""
	}
	return full[first:last]
}

// filterReader streams a body while looking for secret forms. In block
// mode the first form found ends the stream with the error found returns
// (the bytes of the form itself never pass); otherwise each form is
// replaced by its repl. Bytes that might start a form are held back until
// the form is ruled out, so a form split across reads is found too.
type filterReader struct {
	src   io.Reader
	close func() error
	forms []form
	block bool
	found func(i int) error // i indexes forms; returns the error to end with

	chunk   []byte // read buffer
	buf     []byte // read but not yet handed on
	out     []byte // ready to hand on
	err     error  // sticky: source error or block error
	blocked error  // the block error, once a form was found in block mode

	// Block mode (a guest's request) holds back a fixed amount, the
	// longest form less one byte, whatever the bytes are: holding only
	// an end that begins a form told an observing server, byte by byte,
	// which guesses began a value (the fifth review read a secret back
	// that way). So that a streamed body is not held up forever, what is
	// held goes on after blockIdle without more data.
	fixedHold int
	pump      chan chunkResult // the source's reads, in block mode
	done      chan struct{}    // closed by Close: the pump stops
	closeOnce sync.Once
}

// blockIdle is how long a request body's held bytes wait for more.
const blockIdle = 200 * time.Millisecond

type chunkResult struct {
	data []byte
	err  error
}

// Blocked is the error that ended the stream because a form was found
// (block mode), or nil.
func (f *filterReader) Blocked() error { return f.blocked }

func newFilterReader(src io.ReadCloser, forms []form, block bool, found func(int) error) *filterReader {
	f := &filterReader{src: src, close: src.Close, forms: forms, block: block, found: found, done: make(chan struct{})}
	if block {
		for _, fm := range forms {
			f.fixedHold = max(f.fixedHold, len(fm.enc)-1)
		}
	}
	return f
}

func (f *filterReader) Read(p []byte) (int, error) {
	for len(f.out) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		data, err, idle := f.next()
		if idle {
			// Nothing more came: what was held goes on, whatever it is.
			f.out = append(f.out, f.buf...)
			f.buf = f.buf[:0]
			continue
		}
		f.buf = append(f.buf, data...)
		if err != nil {
			f.err = err
		}
		if ferr := f.process(err != nil); ferr != nil {
			f.err, f.blocked = ferr, ferr
			f.buf = nil
		}
		if f.err != nil {
			f.stopPump()
		}
	}
	n := copy(p, f.out)
	f.out = f.out[n:]
	return n, nil
}

// next is the source's next read; in block mode, with bytes held, idle
// when none came within blockIdle.
func (f *filterReader) next() (data []byte, err error, idle bool) {
	if f.chunk == nil {
		f.chunk = make([]byte, 32<<10)
	}
	if !f.block {
		n, err := f.src.Read(f.chunk)
		return f.chunk[:n], err, false
	}
	if f.pump == nil {
		f.pump = make(chan chunkResult)
		go func() {
			for {
				buf := make([]byte, 32<<10)
				n, err := f.src.Read(buf)
				select {
				case f.pump <- chunkResult{buf[:n], err}:
				case <-f.done:
					return
				}
				if err != nil {
					return
				}
			}
		}()
	}
	var idleC <-chan time.Time
	if len(f.buf) > 0 {
		t := time.NewTimer(blockIdle)
		defer t.Stop()
		idleC = t.C
	}
	select {
	case r := <-f.pump:
		return r.data, r.err, false
	case <-idleC:
		return nil, nil, true
	case <-f.done:
		return nil, io.ErrClosedPipe, false
	}
}

// hold is how many bytes at the end of buf must wait for more: in block
// mode a fixed amount (fixedHold); else the longest end of buf that
// begins some form. A match can start nowhere
// else, so everything before it goes on at once (a stream such as
// server-sent events is not held up).
func (f *filterReader) hold() int {
	if f.block {
		return min(f.fixedHold, len(f.buf))
	}
	h := 0
	for _, fm := range f.forms {
		for k := min(len(fm.enc)-1, len(f.buf)); k > h; k-- {
			if f.buf[len(f.buf)-k] == fm.enc[0] && bytes.HasSuffix(f.buf, fm.enc[:k]) {
				h = k
				break
			}
		}
	}
	return h
}

// process moves what is safe from buf to out; at the end (eof) all of it.
func (f *filterReader) process(eof bool) error {
	for {
		at, which := -1, -1
		for i, fm := range f.forms {
			if j := bytes.Index(f.buf, fm.enc); j >= 0 && (at < 0 || j < at) {
				at, which = j, i
			}
		}
		if at < 0 {
			break
		}
		if f.block {
			f.out = append(f.out, f.buf[:at]...)
			return f.found(which)
		}
		f.out = append(f.out, f.buf[:at]...)
		f.out = append(f.out, f.forms[which].repl...)
		f.buf = f.buf[at+len(f.forms[which].enc):]
		if f.found != nil {
			_ = f.found(which)
		}
	}
	safe := len(f.buf)
	if !eof {
		safe -= f.hold()
	}
	f.out = append(f.out, f.buf[:safe]...)
	f.buf = append(f.buf[:0], f.buf[safe:]...)
	return nil
}

func (f *filterReader) Close() error {
	f.stopPump()
	return f.close()
}

// stopPump lets the pump go once its read returns.
func (f *filterReader) stopPump() { f.closeOnce.Do(func() { close(f.done) }) }

// findForm reports the first form in s, or -1.
func findForm(s string, forms []form) int {
	for i, fm := range forms {
		if strings.Contains(s, string(fm.enc)) {
			return i
		}
	}
	return -1
}

// scrubString replaces every form in s by its repl.
func scrubString(s string, forms []form) (string, bool) {
	changed := false
	for _, fm := range forms {
		if strings.Contains(s, string(fm.enc)) {
			s = strings.ReplaceAll(s, string(fm.enc), string(fm.repl))
			changed = true
		}
	}
	return s, changed
}
