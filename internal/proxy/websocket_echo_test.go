package proxy

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// wsUpgrade sends an upgrade request carrying the placeholder over a
// terminated connection and returns the guest's reader after the 101.
func wsUpgrade(t *testing.T, e *reviewEnv, placeholder, extra string) (*http.Response, func() []byte) {
	t.Helper()
	tc, br := e.terminated(t, "api.test")
	fmt.Fprintf(tc, "GET /ws HTTP/1.1\r\nHost: api.test\r\nX-Token: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n", placeholder, extra)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// Refused (what sbx does for a host with secrets): nothing of
		// the value in the refusal.
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(resp.Status+string(b), reviewValue) {
			t.Errorf("the refusal carried the real value: %q %q", resp.Status, b)
		}
		return resp, func() []byte { return nil }
	}
	return resp, func() []byte {
		b, _ := io.ReadAll(br)
		return b
	}
}

// 1. The reason phrase of a 101 is written to the guest verbatim by
// httputil's handleUpgradeResponse (res.Write uses res.Status); the
// injector scrubs header values only.
// Found by the fourth outside review (as the four tests below); they fail
// on the code before its fix, which let upgrades through scrubbed.
func TestUpgradeReasonPhraseNeverCarriesValue(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching for %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", r.Header.Get("X-Token"))
		brw.Flush()
	}), false)
	ph := e.custom(t, reviewValue)
	resp, _ := wsUpgrade(t, e, ph, "")
	if strings.Contains(resp.Status, reviewValue) {
		t.Errorf("the 101 status line carried the real value to the guest: %q", resp.Status)
	}
}

// 2. WebSocket permessage-deflate (the guest offers it; the proxy passes
// Sec-WebSocket-Extensions both ways): the server's frames are DEFLATE
// compressed, the filter scans the compressed bytes, the guest inflates
// them and reads the value.
func TestWebSocketDeflateNeverCarriesValue(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		ext := ""
		if strings.Contains(r.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
			ext = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
		}
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n%s\r\n", ext)
		msg := []byte(`{"error":"bad token ` + r.Header.Get("X-Token") + `"}`)
		var buf bytes.Buffer
		fw, _ := flate.NewWriter(&buf, flate.BestCompression)
		fw.Write(msg)
		fw.Flush()
		payload := bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})
		brw.Write([]byte{0x80 | 0x40 | 0x1, byte(len(payload))}) // FIN, RSV1 (compressed), text
		brw.Write(payload)
		brw.Flush()
	}), false)
	ph := e.custom(t, reviewValue)
	_, rest := wsUpgrade(t, e, ph, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
	frame := rest()
	if len(frame) < 2 {
		return // refused
	}
	n := int(frame[1] & 0x7f)
	payload := frame[2 : 2+n]
	plain, _ := io.ReadAll(flate.NewReader(io.MultiReader(bytes.NewReader(payload), bytes.NewReader([]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff}))))
	if bytes.Contains(plain, []byte(reviewValue)) {
		t.Errorf("the guest inflated a WebSocket message and read the real value: %q", plain)
	}
}

// 3. A WebSocket message in fragments: each frame has a header between
// the payload pieces, so the value split across two frames is never one
// run of bytes in the stream; the guest joins the fragments.
func TestWebSocketFragmentsNeverCarryValue(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprint(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		msg := "bad token " + r.Header.Get("X-Token")
		a, b := msg[:len(msg)/2], msg[len(msg)/2:]
		brw.Write(append([]byte{0x01, byte(len(a))}, a...)) // text, not FIN
		brw.Write(append([]byte{0x80, byte(len(b))}, b...)) // continuation, FIN
		brw.Flush()
	}), false)
	ph := e.custom(t, reviewValue)
	_, rest := wsUpgrade(t, e, ph, "")
	s := rest()
	var msg []byte
	for len(s) >= 2 {
		n := int(s[1] & 0x7f)
		msg = append(msg, s[2:2+n]...)
		s = s[2+n:]
	}
	if bytes.Contains(msg, []byte(reviewValue)) {
		t.Errorf("the guest joined WebSocket fragments and read the real value: %q", msg)
	}
}

// 4. Header names are not scrubbed, only values.
func TestHeaderNameNeverCarriesValue(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-"+r.Header.Get("X-Token"), "1")
		io.WriteString(w, "ok")
	}), false)
	ph := e.custom(t, reviewValue)
	req, _ := http.NewRequest(http.MethodGet, "https://api.test/h", nil)
	req.Header.Set("X-Token", ph)
	resp, err := e.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for k := range resp.Header {
		if strings.Contains(strings.ToLower(k), strings.ToLower(reviewValue)) {
			t.Errorf("a response header name carried the real value: %q", k)
		}
	}
}
