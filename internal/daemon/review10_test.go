package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Found by the tenth outside review: a refused rule request chose the
// default policy, a body with data after its JSON was taken, and a text
// message that was no control message (or an unknown signal) was dropped
// without a word.
func TestAPIRefusesWhatItCannotRead(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.AddRules(ctx, RulesRequest{Action: "maybe", Resources: []string{"x.com"}}); err == nil {
		t.Fatal("action maybe was taken")
	}
	if v, err := f.c.Policy(ctx, ""); err != nil || v.Default != "" {
		t.Errorf("a refused request chose the default: %q %v", v.Default, err)
	}
	for _, body := range []string{`{"default":"deny-all"} {"x":1}`, `{"default":"deny-all"}x`} {
		req, _ := http.NewRequestWithContext(ctx, "PUT", f.c.Base+"/v1/policy/default", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := f.c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), "after the JSON value") {
			t.Errorf("%s: %d %s", body, resp.StatusCode, b)
		}
	}
	if v, _ := f.c.Policy(ctx, ""); v.Default != "" {
		t.Errorf("a refused body changed the default to %q", v.Default)
	}
	// The twelfth review: a later key spelt otherwise won
	// ({"action":"deny",...,"ACTION":"allow"} added an allow).
	for _, body := range []string{
		`{"action":"deny","resources":["a.example"],"ACTION":"allow"}`,
		`{"action":"deny","resources":["a.example"],"action":"allow"}`,
	} {
		req, _ := http.NewRequestWithContext(ctx, "POST", f.c.Base+"/v1/policy/rules", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := f.c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), "action") {
			t.Errorf("%s: %d %s", body, resp.StatusCode, b)
		}
	}
	if v, _ := f.c.Policy(ctx, ""); len(v.Rules) != 0 {
		t.Errorf("a refused body added %v", v.Rules)
	}

	if _, err := f.c.Create(ctx, CreateRequest{Name: "ctl", Workspace: f.ws}); err != nil {
		t.Fatal(err)
	}
	u := strings.Replace(f.c.Base, "http", "ws", 1) + "/v1/sandboxes/ctl/exec"
	for _, c := range []struct{ first, ctl, want string }{
		{`{"argv":["true"]} trailing`, "", "first message"},
		{`{"argv":["sleep","30"]}`, `{"signal":"FOO"}`, "no signal named"},
		{`{"argv":["sleep","30"]}`, `{"bogus":true}`, "control message"},
		{`{"argv":["sleep","30"]}`, `not json`, "control message"},
	} {
		conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: f.c.HTTP})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		conn.Write(ctx, websocket.MessageText, []byte(c.first))
		if c.ctl != "" {
			conn.Write(ctx, websocket.MessageText, []byte(c.ctl))
		}
		var res TTYResult
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				t.Errorf("%s %s: no result: %v", c.first, c.ctl, err)
				break
			}
			if typ == websocket.MessageText {
				json.Unmarshal(data, &res)
				break
			}
		}
		conn.CloseNow()
		if res.Error == nil || !strings.Contains(res.Error.Message, c.want) || time.Since(start) > 20*time.Second {
			t.Errorf("%s %s: %+v after %v", c.first, c.ctl, res, time.Since(start))
		}
	}
	var out bytes.Buffer
	if code, err := f.c.ExecTTY(ctx, "ctl", TTYRequest{ExecRequest: ExecRequest{Argv: []string{"echo", "ok"}}}, TTYIO{Stdout: &out}); err != nil || code != 0 {
		t.Errorf("a good exec after: %d %v", code, err)
	}
}

// Found by the tenth outside review: a raw upload to "dir/" made a file
// called dir, and a FIFO downloaded as an empty archive or a 502.
func TestAPIFilesOddPaths(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.Create(ctx, CreateRequest{Name: "odd", Workspace: f.ws}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := f.c.Upload(ctx, "odd", dir+"/newdir/", "application/octet-stream", strings.NewReader("x")); err == nil {
		t.Error("a raw upload to a path ending in / worked")
	} else if s, _ := apiCode(err); s != 400 {
		t.Errorf("trailing /: %v", err)
	}
	fifo := dir + "/fifo"
	if err := syscallMkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	for _, raw := range []bool{false, true} {
		rc, err := f.c.Download(ctx, "odd", fifo, raw)
		if err == nil {
			rc.Close()
			t.Errorf("raw=%v: a FIFO downloaded", raw)
		} else if s, _ := apiCode(err); s != 400 || !strings.Contains(err.Error(), "FIFO") {
			t.Errorf("raw=%v: %v", raw, err)
		}
	}
}

func syscallMkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }

// Found by the tenth outside review: a sandbox whose config is damaged
// was missing from the API's list and could not be removed through it.
func TestAPIDamagedSandbox(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	in, err := f.c.Create(ctx, CreateRequest{Name: "torn", Workspace: f.ws, NoStart: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.m.Store.DirOf(in.ID), "config.json"), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	list, err := f.c.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != in.ID || list[0].Status != "unknown" || !strings.Contains(list[0].Reason, "config") {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := f.c.Remove(ctx, in.ID, false); err == nil {
		t.Error("a damaged sandbox went without force")
	} else if s, _ := apiCode(err); s != 409 {
		t.Errorf("without force: %v", err)
	}
	if err := f.c.Remove(ctx, in.ID, true); err != nil {
		t.Fatalf("with force: %v", err)
	}
	if list, _ := f.c.List(ctx); len(list) != 0 {
		t.Errorf("after remove: %+v", list)
	}
	if _, err := os.Stat(f.m.Store.DirOf(in.ID)); err == nil {
		t.Error("its folder is still there")
	}
}

// Found by the tenth outside review: every exec that could not start was
// about "argv", a missing user or folder too.
func TestAPIExecFieldAtFault(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.Create(ctx, CreateRequest{Name: "fld", Workspace: f.ws}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req   TTYRequest
		field string
	}{
		{TTYRequest{ExecRequest: ExecRequest{Argv: []string{"true"}, User: "no-such-user"}}, "user"},
		{TTYRequest{ExecRequest: ExecRequest{Argv: []string{"true"}, Dir: "/no/such/folder"}}, "dir"},
		{TTYRequest{ExecRequest: ExecRequest{Argv: []string{"no-such-program"}}}, "argv"},
		{TTYRequest{ExecRequest: ExecRequest{Argv: []string{"true"}}, Term: "xterm\x00x"}, "term"},
		{TTYRequest{ExecRequest: ExecRequest{Argv: []string{"true"}, Env: []string{"A=\x00"}}}, "env"},
	} {
		var out bytes.Buffer
		_, err := f.c.Exec(ctx, "fld", c.req.ExecRequest, &out, &out)
		if c.req.Term != "" {
			_, err = f.c.ExecTTY(ctx, "fld", c.req, TTYIO{Stdout: &out})
		}
		var ae *APIError
		if !errors.As(err, &ae) || ae.Field != c.field {
			t.Errorf("%+v: %v (want field %s)", c.req, err, c.field)
		}
	}
}

// Found by the tenth outside review: an unknown route, a wrong method, a
// plain GET of the WebSocket route and a foreign Origin were answered in
// text, not the API's JSON error.
func TestAPIRefusalsAreJSON(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.Create(ctx, CreateRequest{Name: "js", Workspace: f.ws, NoStart: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		status       int
	}{
		{"GET", "/v1/nope", nil, 404},
		{"PATCH", "/v1/sandboxes", nil, 405},
		{"GET", "/v1/sandboxes/js/exec", nil, 426},
		{"GET", "/v1/sandboxes/js/exec", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "http://evil.example"}, 403},
	} {
		req, _ := http.NewRequestWithContext(ctx, c.method, f.c.Base+c.path, nil)
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		resp, err := f.c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error ErrorMsg }
		derr := json.NewDecoder(resp.Body).Decode(&body)
		e := body.Error
		resp.Body.Close()
		if resp.StatusCode != c.status || derr != nil || e.Message == "" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s %s: %d %q %+v %v", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Type"), e, derr)
		}
		if c.status == 405 && resp.Header.Get("Allow") == "" {
			t.Errorf("405 without Allow")
		}
	}
}

// Found by the twelfth review: an exec's environment entries were not
// checked ("NOEQ", "=x", "A B=1" reached the guest), and every refusal
// of an exec, a stopped sandbox's included, came as a 200 with an error
// frame, where the docs say 400 and 409.
func TestAPIExecRefusedBeforeTheStream(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.Create(ctx, CreateRequest{Name: "pre", Workspace: f.ws}); err != nil {
		t.Fatal(err)
	}
	post := func(body string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, "POST", f.c.Base+"/v1/sandboxes/pre/exec", strings.NewReader(body))
		resp, err := f.c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	for _, env := range []string{`"NOEQ"`, `"=x"`, `"A B=1"`} {
		if code, b := post(`{"argv":["env"],"env":[` + env + `]}`); code != 400 || !strings.Contains(b, `"field": "env"`) {
			t.Errorf("env %s: %d %s", env, code, b)
		}
	}
	if code, b := post(`{"argv":["true"],"env":["A=1","B="]}`); code != 200 || !strings.Contains(b, `"exit":0`) {
		t.Errorf("good env: %d %s", code, b)
	}
	if _, err := f.c.Stop(ctx, "pre"); err != nil {
		t.Fatal(err)
	}
	if code, b := post(`{"argv":["true"]}`); code != 409 || !strings.Contains(b, `"field": "state"`) {
		t.Errorf("a stopped sandbox: %d %s", code, b)
	}
}
