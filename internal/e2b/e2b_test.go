package e2b

import (
	"bytes"
	"encoding/binary"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The wire pieces without a sandbox: envelopes both ways, find's entry
// fields, and the auth that guards every route (the SDK test in
// integration/e2b_test.go drives the rest against real sandboxes).

func TestEnvelope(t *testing.T) {
	var req bytes.Buffer
	body := []byte(`{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"]}}`)
	req.WriteByte(0)
	binary.Write(&req, binary.BigEndian, uint32(len(body)))
	req.Write(body)
	var got startRequest
	if err := readEnvelope(&req, &got); err != nil || got.Process.Cmd != "/bin/bash" || len(got.Process.Args) != 3 {
		t.Fatalf("%+v %v", got, err)
	}
	for _, bad := range [][]byte{{1, 0, 0, 0, 2, '{', '}'}, {0, 0xff, 0xff, 0xff, 0xff}, {0, 0, 0}} {
		if err := readEnvelope(bytes.NewReader(bad), &got); err == nil {
			t.Errorf("envelope %x read", bad)
		}
	}
	rec := httptest.NewRecorder()
	sw := newStream(rec)
	sw.send(0, map[string]int{"a": 1})
	sw.end("", "")
	out := rec.Body.Bytes()
	if rec.Header().Get("Content-Type") != "application/connect+json" || out[0] != 0 || binary.BigEndian.Uint32(out[1:5]) != 7 || out[12] != flagEndStream {
		t.Errorf("stream %q", out)
	}
}

func TestEntries(t *testing.T) {
	out := "f\x0011\x00644\x00agent\x00agent\x001700000000.5\x00/home/user/a b\x00\x00" +
		"l\x007\x00777\x00agent\x00agent\x001700000000\x00/home/user/l\x00/etc\x00" +
		"p\x000\x00644\x00agent\x00agent\x001700000000\x00/home/user/fifo\x00\x00"
	es := entries([]byte(out))
	if len(es) != 2 {
		t.Fatalf("%d entries, want 2 (a fifo has no E2B type): %v", len(es), es)
	}
	if es[0]["name"] != "a b" || es[0]["type"] != "FILE_TYPE_FILE" || es[0]["size"] != "11" || es[0]["permissions"] != "-rw-r--r--" {
		t.Errorf("file %v", es[0])
	}
	if es[1]["type"] != "FILE_TYPE_SYMLINK" || es[1]["symlinkTarget"] != "/etc" {
		t.Errorf("link %v", es[1])
	}
}

// Every control route wants the API key; every envd route a known
// sandbox and its own access token.
func TestAuth(t *testing.T) {
	s := &Server{APIKey: "the-daemon-token-0123"}
	s.boxes = map[string]*box{"e2b-x": {id: "e2b-x", token: "box-token"}}
	h := s.Handler()
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		want         int
	}{
		{"POST", "/v2/sandboxes", nil, 401},
		{"GET", "/v2/sandboxes", map[string]string{"X-API-KEY": "wrong"}, 401},
		{"DELETE", "/sandboxes/e2b-x", map[string]string{"X-API-KEY": ""}, 401},
		{"GET", "/health", map[string]string{"E2b-Sandbox-Id": "e2b-nope"}, 502},
		{"GET", "/health", map[string]string{"E2b-Sandbox-Id": "e2b-x"}, 401},
		{"POST", "/process.Process/Start", map[string]string{"E2b-Sandbox-Id": "e2b-x", "X-Access-Token": "the-daemon-token-0123"}, 401},
		{"GET", "/files?path=/etc/passwd", map[string]string{"E2b-Sandbox-Id": "e2b-x", "X-Access-Token": "box-tokeN"}, 401},
	} {
		r := httptest.NewRequest(c.method, c.path, strings.NewReader("{}"))
		for k, v := range c.hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("%s %s %v: %d, want %d", c.method, c.path, c.hdr, w.Code, c.want)
		}
		// A refused client does not keep its connection (eighth review).
		if w.Header().Get("Connection") != "close" {
			t.Errorf("%s %s %v: the refusal keeps the connection", c.method, c.path, c.hdr)
		}
	}
	// An empty API key lets nobody in.
	s2 := &Server{}
	w := httptest.NewRecorder()
	s2.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/v2/sandboxes", nil))
	if w.Code != http.StatusUnauthorized {
		t.Errorf("no API key configured: %d", w.Code)
	}
}

// Found by the seventh outside review: a timeout of 584 years overflowed
// and removed the sandbox at once.
func TestLifetime(t *testing.T) {
	for secs, ok := range map[int64]bool{0: true, 1: true, 86400: true, 86401: false, 18446744074: false, -5: false} {
		if _, err := lifetime(secs); (err == nil) != ok {
			t.Errorf("lifetime(%d): %v", secs, err)
		}
	}
}

// Found by the eighth outside review: files.write of several files put
// each in the home folder under its base name. The part's file name is
// taken whole.
func TestPartPath(t *testing.T) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, p := range []string{"/tmp/deep/a.txt", "sub/b.txt"} {
		w, _ := mw.CreateFormFile("file", p)
		w.Write([]byte("x"))
	}
	mw.Close()
	mr := multipart.NewReader(&b, mw.Boundary())
	for _, want := range []string{"/tmp/deep/a.txt", "sub/b.txt"} {
		part, err := mr.NextPart()
		if err != nil {
			t.Fatal(err)
		}
		if got := partPath(part); got != want {
			t.Errorf("partPath = %q, want %q", got, want)
		}
	}
}
