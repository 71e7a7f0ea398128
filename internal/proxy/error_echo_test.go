package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// Found by the sixth outside review; fails on the code before its fix.
// An upstream that reflects the injected credential into a header line
// Go refuses (a control byte) made the transport fail with an error that
// quotes the line: the 502 page gave the guest the real value, and the
// proxy's log kept it. Both now carry the placeholder.
func TestUpstreamErrorNeverCarriesValue(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nX-Reflect: zz" + r.Header.Get("X-Token") + "\x01\r\nContent-Length: 0\r\n\r\n")
		buf.Flush()
	}), false)
	ph := e.custom(t, reviewValue)
	req, _ := http.NewRequest(http.MethodGet, "https://api.test/echo", nil)
	req.Header.Set("X-Token", ph)
	resp, err := e.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502 (body %q)", resp.StatusCode, body)
	}
	if strings.Contains(string(body), reviewValue) || !strings.Contains(string(body), ph) {
		t.Errorf("the 502 page: %q; want the placeholder, never the value", body)
	}
	if logs := e.logs.String(); strings.Contains(logs, reviewValue) {
		t.Errorf("the proxy's log holds the value:\n%s", logs)
	}
}

// Found by the seventh outside review; fails on the code before its fix.
// A malformed trailer that echoes the credential fails the body copy
// after the headers went out: the reverse proxy's own error log wrote
// the quoted line, value and all, to the supervisor log.
func TestCopyErrorLogNeverCarriesValue(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nbad trailer " + r.Header.Get("X-Token") + "\r\n\r\n")
		buf.Flush()
	}), false)
	ph := e.custom(t, reviewValue)
	req, _ := http.NewRequest(http.MethodGet, "https://api.test/trailer", nil)
	req.Header.Set("X-Token", ph)
	if resp, err := e.client(false).Do(req); err == nil {
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	logs := e.logs.String()
	if strings.Contains(logs, reviewValue) {
		t.Errorf("the proxy's log holds the value:\n%s", logs)
	}
	if !strings.Contains(logs, "bad trailer") {
		t.Logf("(the copy error was not logged; logs:\n%s)", logs)
	}
}
