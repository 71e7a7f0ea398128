package daemon

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/policy"
)

// TestAPIFiles: upload a tar and a raw file, download both ways; a raw
// download of a folder, a relative path and a wrong content type are
// refused with their codes.
func TestAPIFiles(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.Create(ctx, CreateRequest{Name: "files", Workspace: f.ws}); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir() // the fake guest is this host
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tree/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "tree/a.txt", Mode: 0o600, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	if err := f.c.Upload(ctx, "files", dst, "application/x-tar", &tb); err != nil {
		t.Fatalf("tar upload: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "tree", "a.txt")); err != nil || string(b) != "hello" {
		t.Errorf("uploaded tree: %q %v", b, err)
	}
	raw := filepath.Join(dst, "raw.bin")
	if err := f.c.Upload(ctx, "files", raw, "application/octet-stream", strings.NewReader("raw bytes\x00\xff")); err != nil {
		t.Fatalf("raw upload: %v", err)
	}
	if b, err := os.ReadFile(raw); err != nil || string(b) != "raw bytes\x00\xff" {
		t.Errorf("uploaded file: %q %v", b, err)
	}
	rc, err := f.c.Download(ctx, "files", raw, true)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "raw bytes\x00\xff" {
		t.Errorf("raw download: %q", b)
	}
	rc, err = f.c.Download(ctx, "files", filepath.Join(dst, "tree"), false)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(rc)
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names[h.Name] = true
	}
	rc.Close()
	if !names["tree/a.txt"] {
		t.Errorf("tar download holds %v", names)
	}
	for _, c := range []struct {
		what   string
		err    error
		status int
	}{
		{"raw download of a folder", func() error { _, err := f.c.Download(ctx, "files", dst, true); return err }(), 400},
		{"a relative path", f.c.Upload(ctx, "files", "rel/x", "application/octet-stream", strings.NewReader("x")), 400},
		{"raw bytes onto a folder", f.c.Upload(ctx, "files", dst, "application/octet-stream", strings.NewReader("x")), 409},
		{"a JSON body", f.c.Upload(ctx, "files", raw, "application/json", strings.NewReader("{}")), 415},
		{"a missing file", func() error { _, err := f.c.Download(ctx, "files", filepath.Join(dst, "missing"), false); return err }(), 404},
		{"no such sandbox", f.c.Upload(ctx, "nobox", raw, "application/octet-stream", strings.NewReader("x")), 404},
	} {
		if s, _ := apiCode(c.err); s != c.status {
			t.Errorf("%s: %v, want status %d", c.what, c.err, c.status)
		}
	}
}

// TestAPIPolicy: rules added globally and for a sandbox, listed, removed;
// the log of a sandbox that made no connection is empty, not null.
func TestAPIPolicy(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.Create(ctx, CreateRequest{Name: "pol", Workspace: f.ws, NoStart: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.SetDefault(ctx, "deny-all"); err != nil {
		t.Fatal(err)
	}
	ans, err := f.c.AddRules(ctx, RulesRequest{Action: "allow", Resources: []string{"example.com", "*.example.org:443"}})
	if err != nil || len(ans.Added) != 2 {
		t.Fatalf("add: %+v %v", ans, err)
	}
	if ans, err := f.c.AddRules(ctx, RulesRequest{Action: "allow", Resources: []string{"example.com"}}); err != nil || len(ans.Existing) != 1 || len(ans.Added) != 0 {
		t.Errorf("second add: %+v %v", ans, err)
	}
	if _, err := f.c.AddRules(ctx, RulesRequest{Action: "deny", Resources: []string{"api.example.com"}, Sandbox: "pol"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []RulesRequest{
		{Action: "permit", Resources: []string{"example.com"}},
		{Action: "allow", Resources: []string{"exa mple.com"}},
		{Action: "allow"},
	} {
		if _, err := f.c.AddRules(ctx, bad); err == nil {
			t.Errorf("%+v was taken", bad)
		} else if s, c := apiCode(err); s != 400 || c != "invalid" {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	if _, err := f.c.AddRules(ctx, RulesRequest{Action: "allow", Resources: []string{"x.com"}, Sandbox: "nobox"}); err == nil {
		t.Error("a rule for a missing sandbox was taken")
	}
	v, err := f.c.Policy(ctx, "pol")
	if err != nil || v.Default != "deny-all" || len(v.Rules) != 3 {
		t.Fatalf("policy of pol: %+v %v", v, err)
	}
	var scoped int
	for _, r := range v.Rules {
		if r.Sandbox == "pol" {
			scoped++
		}
	}
	if scoped != 1 {
		t.Errorf("rules of pol: %+v", v.Rules)
	}
	removed, err := f.c.RemoveRules(ctx, "example.com", "", "")
	if err != nil || len(removed) != 1 || removed[0].Action != policy.Allow {
		t.Errorf("remove: %+v %v", removed, err)
	}
	if _, err := f.c.RemoveRules(ctx, "example.com", "", ""); err == nil {
		t.Error("removing a rule twice worked")
	} else if s, _ := apiCode(err); s != 404 {
		t.Errorf("second remove: %v", err)
	}
	rows, err := f.c.PolicyLog(ctx, "pol", 0)
	if err != nil || rows == nil || len(rows) != 0 {
		t.Errorf("log: %+v %v", rows, err)
	}
	if err := f.c.Remove(ctx, "pol", true); err != nil {
		t.Fatal(err)
	}
	if v, err := f.c.Policy(ctx, ""); err != nil || len(v.Rules) != 1 {
		t.Errorf("after rm, the sandbox's rule stays: %+v %v", v, err)
	}
}

// TestAPIExecTTY: an interactive exec on a terminal of the asked size
// with stdin, an exec on pipes with stderr apart, and a signal.
func TestAPIExecTTY(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.Create(ctx, CreateRequest{Name: "tty", Workspace: f.ws}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code, err := f.c.ExecTTY(ctx, "tty", TTYRequest{ExecRequest: ExecRequest{Argv: []string{"sh", "-c", "test -t 0 && stty size; read x; echo got $x; exit 4"}}, Rows: 30, Cols: 100},
		TTYIO{Stdin: strings.NewReader("hello\n"), Stdout: &out})
	if err != nil || code != 4 || !strings.Contains(out.String(), "30 100") || !strings.Contains(out.String(), "got hello") {
		t.Errorf("tty exec: code %d err %v output %q", code, err, out.String())
	}
	no := false
	var o, e bytes.Buffer
	code, err = f.c.ExecTTY(ctx, "tty", TTYRequest{ExecRequest: ExecRequest{Argv: []string{"sh", "-c", "test -t 1 || echo pipes; echo oops >&2"}}, TTY: &no}, TTYIO{Stdout: &o, Stderr: &e})
	if err != nil || code != 0 || o.String() != "pipes\n" || e.String() != "oops\n" {
		t.Errorf("pipe exec: code %d err %v stdout %q stderr %q", code, err, o.String(), e.String())
	}
	ctl := make(chan TTYControl, 1)
	start := time.Now()
	go func() {
		time.Sleep(500 * time.Millisecond)
		ctl <- TTYControl{Signal: "TERM"}
	}()
	code, err = f.c.ExecTTY(ctx, "tty", TTYRequest{ExecRequest: ExecRequest{Argv: []string{"sleep", "30"}}}, TTYIO{Control: ctl})
	if err != nil || code == 0 || time.Since(start) > 20*time.Second {
		t.Errorf("signalled exec: code %d err %v after %v", code, err, time.Since(start))
	}
	if _, err := f.c.ExecTTY(ctx, "tty", TTYRequest{}, TTYIO{}); err == nil {
		t.Error("an empty argv ran")
	} else if _, c := apiCode(err); c != "invalid" {
		t.Errorf("empty argv: %v", err)
	}
	if _, err := f.c.ExecTTY(ctx, "nobox", TTYRequest{ExecRequest: ExecRequest{Argv: []string{"true"}}}, TTYIO{}); err == nil {
		t.Error("an exec in a missing sandbox ran")
	} else if s, _ := apiCode(err); s != 404 {
		t.Errorf("missing sandbox: %v", err)
	}
}

// Found by the ninth outside review: stdin for a process that did not
// read it blocked the loop reading the client, so a client that went
// away (or sent KILL) was never seen and the process ran on. The loop
// keeps reading; past 16 MiB of waiting stdin the exec ends.
func TestAPIExecTTYStdinBackedUp(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	if _, err := f.c.Create(ctx, CreateRequest{Name: "stuck", Workspace: f.ws}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := f.c.ExecTTY(ctx, "stuck", TTYRequest{ExecRequest: ExecRequest{Argv: []string{"sleep", "60"}}},
		TTYIO{Stdin: bytes.NewReader(make([]byte, 40<<20))})
	if s, c := apiCode(err); c != "invalid" || s != 200 || time.Since(start) > 30*time.Second {
		t.Errorf("backed-up stdin: %v after %v", err, time.Since(start))
	}
	// And a KILL behind unread stdin is seen.
	ctl := make(chan TTYControl, 1)
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, 2<<20))
		ctl <- TTYControl{Signal: "KILL"}
	}()
	defer pw.Close()
	start = time.Now()
	code, err := f.c.ExecTTY(ctx, "stuck", TTYRequest{ExecRequest: ExecRequest{Argv: []string{"sleep", "60"}}}, TTYIO{Stdin: pr, Control: ctl})
	if err != nil || code == 0 || time.Since(start) > 30*time.Second {
		t.Errorf("KILL behind stdin: code %d err %v after %v", code, err, time.Since(start))
	}
}
