package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// FuzzSplitHostPort: CONNECT authorities and Host headers never panic, and
// an accepted one has a clean host and a non-zero port.
func FuzzSplitHostPort(f *testing.F) {
	for _, s := range []string{"example.com:443", "[::1]:80", "[fe80::1%25eth0]:443", "EXAMPLE.com.", "a@b:1", "host:0", ":80", "x:99999", "[::1]"} {
		f.Add(s, uint16(80))
	}
	f.Fuzz(func(t *testing.T, hostport string, def uint16) {
		host, port, err := splitHostPort(hostport, def)
		if err != nil {
			return
		}
		if port == 0 || strings.ContainsAny(host, " /\\@[]") || host != strings.ToLower(host) {
			t.Fatalf("splitHostPort(%q, %d) = %q, %d", hostport, def, host, port)
		}
	})
}

// readerConn is a net.Conn reading from r; writes are discarded.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c readerConn) Write(b []byte) (int, error) { return len(b), nil }
func (c readerConn) Close() error                { return nil }

// FuzzReadClientHello: arbitrary client bytes never panic, and whatever was
// consumed is exactly a prefix of the input (so replay is faithful).
func FuzzReadClientHello(f *testing.F) {
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(helloBytes(f, "api.test"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		hello, consumed, err := readClientHello(readerConn{r: bytes.NewReader(in[1:])}, in[:1])
		if err != nil {
			return
		}
		if !bytes.HasPrefix(in, consumed) {
			t.Fatalf("consumed %x is not a prefix of the input", consumed)
		}
		_ = hello.ServerName
	})
}

// helloBytes returns a real ClientHello for sni.
func helloBytes(tb testing.TB, sni string) []byte {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() {
		_ = tls.Client(c1, &tls.Config{ServerName: sni}).Handshake()
	}()
	buf := make([]byte, 16<<10)
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c2.Read(buf)
	if err != nil {
		tb.Fatal(err)
	}
	return buf[:n]
}

func TestReadClientHello(t *testing.T) {
	in := append(helloBytes(t, "API.test"), "trailing"...)
	hello, consumed, err := readClientHello(readerConn{r: bytes.NewReader(in[1:])}, in[:1])
	if err != nil {
		t.Fatal(err)
	}
	if hello.ServerName != "api.test" && hello.ServerName != "API.test" {
		t.Errorf("ServerName = %q", hello.ServerName)
	}
	if !bytes.HasPrefix(in, consumed) || len(consumed) < 5 {
		t.Errorf("consumed %d bytes, not a prefix", len(consumed))
	}
}
