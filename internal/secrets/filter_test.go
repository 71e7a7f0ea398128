package secrets

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"
)

const filterValue = "s3cr3t/VALUE+with=odd&chars"

// Every usual spelling of a value is one of its forms, whatever surrounds
// it in a base64 text.
func TestEncodedForms(t *testing.T) {
	forms := encodedForms(filterValue, "PLACEHOLDER")
	for _, spelled := range []string{
		filterValue,
		url.QueryEscape(filterValue),
		url.PathEscape(filterValue),
		base64.StdEncoding.EncodeToString([]byte("x-access-token:" + filterValue)),
		base64.StdEncoding.EncodeToString([]byte("u:" + filterValue + ":x")),
		base64.RawURLEncoding.EncodeToString([]byte("a" + filterValue)),
		base64.StdEncoding.EncodeToString([]byte(filterValue)),
	} {
		if findForm(spelled, forms) < 0 {
			t.Errorf("%q: no form found", spelled)
		}
	}
	if findForm("nothing to see", forms) >= 0 {
		t.Error("a form found in unrelated text")
	}
}

// A form split across reads is still caught: in block mode before any of
// its bytes pass, in replace mode replaced whole.
func TestFilterHoldBack(t *testing.T) {
	forms := encodedForms(filterValue, "PH")
	text := strings.Repeat("x", 100) + filterValue + strings.Repeat("y", 50)
	for _, block := range []bool{true, false} {
		src := io.NopCloser(iotest.OneByteReader(strings.NewReader(text)))
		stop := errors.New("blocked")
		f := newFilterReader(src, forms, block, func(int) error { return stop })
		got, err := io.ReadAll(iotest.OneByteReader(f))
		switch {
		case block && (!errors.Is(err, stop) || string(got) != strings.Repeat("x", 100)):
			t.Errorf("block: got %q, %v", got, err)
		case block && f.Blocked() == nil:
			t.Error("block: Blocked() is nil")
		case !block && (err != nil || string(got) != strings.Repeat("x", 100)+"PH"+strings.Repeat("y", 50)):
			t.Errorf("replace: got %q, %v", got, err)
		}
	}
}

// Whatever the body and however it is cut into reads, no form of the value
// comes out of a replacing filter, a blocking filter emits nothing of the
// value, and text without the value passes unchanged.
func FuzzFilterBody(f *testing.F) {
	f.Add([]byte("plain text"), uint8(3))
	f.Add([]byte("pre "+filterValue+" post"), uint8(1))
	f.Add([]byte(base64.StdEncoding.EncodeToString([]byte("user:"+filterValue))), uint8(7))
	f.Add([]byte(filterValue[:10]), uint8(2))
	f.Fuzz(func(t *testing.T, body []byte, chunk uint8) {
		forms := encodedForms(filterValue, "PH")
		n := int(chunk%16) + 1
		src := func() io.ReadCloser { return io.NopCloser(iotest.HalfReader(&chunked{b: body, n: n})) }
		out, err := io.ReadAll(newFilterReader(src(), forms, false, nil))
		if err != nil {
			t.Fatal(err)
		}
		if i := findForm(string(out), forms); i >= 0 && findForm(string(body), forms) < 0 {
			t.Fatalf("replace mode made a form out of %q", body)
		}
		if findForm(string(body), forms) < 0 && !bytes.Equal(out, body) {
			t.Fatalf("body without the value changed: %q -> %q", body, out)
		}
		out, _ = io.ReadAll(newFilterReader(src(), forms, true, func(int) error { return io.ErrUnexpectedEOF }))
		if bytes.Contains(out, []byte(filterValue)) {
			t.Fatalf("block mode let the value through: %q", out)
		}
	})
}

// chunked hands out b n bytes at a time.
type chunked struct {
	b []byte
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.b)
	c.b = c.b[k:]
	return k, nil
}

// An interactive stream is not held up: bytes that begin no form go on
// at once, with the source still open; only an end that may begin one
// waits, and is scrubbed once the rest arrives.
func TestFilterReleasesWhatBeginsNoForm(t *testing.T) {
	forms := encodedForms(filterValue, "PH")
	pr, pw := io.Pipe()
	f := newFilterReader(pr, forms, false, nil)
	read := func() string {
		b := make([]byte, 256)
		n, _ := f.Read(b)
		return string(b[:n])
	}
	go pw.Write([]byte("ping"))
	if got := read(); got != "ping" {
		t.Fatalf("first read %q, want ping", got)
	}
	// "s3cr" may begin the value: held until the rest says it does.
	go pw.Write([]byte("pong " + filterValue[:4]))
	if got := read(); got != "pong " {
		t.Fatalf("second read %q, want %q", got, "pong ")
	}
	go func() { pw.Write([]byte(filterValue[4:] + " end")); pw.Close() }()
	rest, _ := io.ReadAll(f)
	if string(rest) != "PH end" {
		t.Fatalf("rest %q, want %q", rest, "PH end")
	}
}
