package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
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

// FuzzForwardRequest: whatever a guest sends to the forward proxy (request
// line, headers, CONNECT authority, absolute-form URL), the proxy never
// panics, never dials anything but the resolved address of an allowed
// name, and the upstream sees only requests for an allowed host.
func FuzzForwardRequest(f *testing.F) {
	for _, s := range []string{
		"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n",
		"CONNECT denied.test:443 HTTP/1.1\r\n\r\n",
		"CONNECT 127.0.0.1:2375 HTTP/1.1\r\n\r\n",
		"CONNECT [::1]:80 HTTP/1.1\r\n\r\n",
		"CONNECT api.test:0 HTTP/1.1\r\n\r\n",
		"CONNECT api.test@denied.test:443 HTTP/1.1\r\n\r\n",
		"CONNECT api.test:443:1 HTTP/1.1\r\n\r\n",
		"GET http://api.test/x HTTP/1.1\r\nHost: denied.test\r\n\r\n",
		"GET http://denied.test@api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET http://api.test:80@127.0.0.1:2375/ HTTP/1.1\r\n\r\n",
		"GET http://API.TEST./ HTTP/1.1\r\nHost: API.TEST.\r\n\r\n",
		"GET http://0x7f000001:2375/ HTTP/1.1\r\n\r\n",
		"GET /relative HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET http://denied.test/ HTTP/1.1\r\n\r\n",
		"\x16\x03\x01\x00\x05garbage",
	} {
		f.Add([]byte(s))
	}
	e := newEnv(f, envOptions{})
	f.Fuzz(func(t *testing.T, data []byte) {
		nd, ne := len(e.Dials()), len(e.Events())
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write(data)
		c.(*net.TCPConn).CloseWrite() // the request is all there is
		io.Copy(io.Discard, c)
		ports := map[uint16]bool{}
		for _, ev := range e.Events()[ne:] {
			if !ev.Allowed {
				continue
			}
			if h := hostOnly(ev.Host); h != "api.test" && h != "other.test" {
				t.Fatalf("allowed a request for %q", ev.Host)
			}
			ports[ev.Port] = true
		}
		for _, d := range e.Dials()[nd:] {
			ap, err := netip.ParseAddrPort(d)
			if err != nil || ap.Addr() != netip.MustParseAddr("127.0.0.1") || !ports[ap.Port()] {
				t.Fatalf("the proxy dialled %q, which no allowed decision named", d)
			}
		}
	})
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}
