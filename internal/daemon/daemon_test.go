package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/template"
	"github.com/sbx-dev/sbx/internal/vm/vmtest"
)

// The API in process: the daemon's handler over a real unix socket (or
// TCP with a token), the lifecycle under it running supervisors with the
// fake VM, so every route is driven end to end without QEMU.

type apiFixture struct {
	c    *Client
	m    *lifecycle.Manager
	base string
	ws   string
}

func newAPI(t *testing.T, token string, tcp bool) *apiFixture {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("no qemu-img")
	}
	base, err := os.MkdirTemp("", "sbx-api")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	dirs := paths.Dirs{Data: filepath.Join(base, "d"), Config: filepath.Join(base, "c"), Cache: filepath.Join(base, "k"), Runtime: filepath.Join(base, "r")}
	u, _ := user.Current()
	m := lifecycle.New(dirs, nil)
	m.Launch = lifecycle.InProcess(&vmtest.Backend{User: u.Username}, slog.New(slog.DiscardHandler))
	img := filepath.Join(base, "template.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 8<<20)
	f := &apiFixture{m: m, base: base, ws: t.TempDir()}
	prepare := func(context.Context, *sandbox.Sandbox) (supervisor.Boot, error) {
		return supervisor.Boot{Accel: "tcg", CPUs: 1, MAC: sandbox.NewMAC(), ConfigDir: dirs.Config}, nil
	}
	s := &Server{
		M: m,
		Create: func(ctx context.Context, req CreateRequest) (*sandbox.Sandbox, error) {
			cfg := sandbox.Config{Name: req.Name, Agent: "shell", Workspaces: []sandbox.Workspace{{Path: req.Workspace}}, UID: 1000, GID: 1000, DiskBytes: 16 << 20}
			return m.Create(ctx, lifecycle.CreateRequest{Config: cfg, Template: template.Template{Name: "t", ID: "0123456789abcdef", Image: img}, Cold: true})
		},
		Start: func(ctx context.Context, sb *sandbox.Sandbox) error {
			if sb.Config.Name == "fails" {
				return &lifecycle.Error{Code: lifecycle.Failed, Msg: "the VM did not start"}
			}
			return m.Start(ctx, sb, lifecycle.StartRequest{Mode: lifecycle.InBackground, Prepare: prepare})
		},
		Token: token,
	}
	var l net.Listener
	if tcp {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	} else {
		l, err = ListenUnix(filepath.Join(dirs.Runtime, "daemon.sock"))
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s.Handler()}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		infos, _ := m.List()
		for _, in := range infos {
			if sb, err := m.Get(in.Name); err == nil {
				m.Stop(ctx, sb)
			}
		}
		srv.Shutdown(ctx)
	})
	if tcp {
		f.c = TCPClient(l.Addr().String(), token)
	} else {
		f.c = UnixClient(filepath.Join(dirs.Runtime, "daemon.sock"))
		if fi, err := os.Stat(filepath.Join(dirs.Runtime, "daemon.sock")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("socket: %v %v, want mode 0600", fi.Mode(), err)
		}
	}
	return f
}

func apiCode(err error) (int, string) {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status, ae.Code
	}
	return 0, ""
}

// TestAPI: create (started), list, inspect, exec with streamed output,
// stdin and exit code, ports, stop, remove; the lifecycle's errors come
// back as their HTTP statuses and codes.
func TestAPI(t *testing.T) {
	f := newAPI(t, "", false)
	ctx := t.Context()
	in, err := f.c.Create(ctx, CreateRequest{Name: "one", Workspace: f.ws})
	if err != nil {
		t.Fatal(err)
	}
	if in.Name != "one" || in.Status != sandbox.StatusRunning {
		t.Fatalf("created: %+v", in)
	}
	if _, err := f.c.Create(ctx, CreateRequest{Name: "one", Workspace: f.ws}); err == nil {
		t.Error("a second create of the name worked")
	} else if s, c := apiCode(err); s != 409 || c != "conflict" {
		t.Errorf("second create: %d %s (%v)", s, c, err)
	}
	if _, err := f.c.Create(ctx, CreateRequest{Name: "two", Workspace: "relative"}); err == nil {
		t.Error("a relative workspace was taken")
	}
	list, err := f.c.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "one" {
		t.Fatalf("list: %+v %v", list, err)
	}
	var out, errb bytes.Buffer
	code, err := f.c.Exec(ctx, "one", ExecRequest{Argv: []string{"sh", "-c", "cat; echo to-stderr >&2; exit 3"}, Stdin: []byte("from stdin\n")}, &out, &errb)
	if err != nil || code != 3 || out.String() != "from stdin\n" || errb.String() != "to-stderr\n" {
		t.Errorf("exec: code %d stdout %q stderr %q err %v", code, out.String(), errb.String(), err)
	}
	if _, err := f.c.Exec(ctx, "one", ExecRequest{}, nil, nil); err == nil {
		t.Error("an empty argv was run")
	}
	// A program that does not exist is the request's fault, with the
	// guest's reason (the sixth review saw "lost the connection").
	if _, err := f.c.Exec(ctx, "one", ExecRequest{Argv: []string{"/nonexistent"}}, nil, nil); err == nil {
		t.Error("a missing program ran")
	} else if _, c := apiCode(err); c != "invalid" || strings.Contains(err.Error(), "lost the connection") {
		t.Errorf("exec of a missing program: %v", err)
	}
	// A create whose start fails leaves no sandbox behind: a retry of the
	// name is not a conflict.
	if _, err := f.c.Create(ctx, CreateRequest{Name: "fails", Workspace: f.ws}); err == nil {
		t.Error("the failing start was not reported")
	}
	if _, err := f.c.Get(ctx, "fails"); err == nil {
		t.Error("the sandbox whose start failed is still there")
	}
	ports, err := f.c.Ports(ctx, "one", PortsRequest{Publish: []string{"127.0.0.1:0:80"}})
	if err != nil || len(ports) != 1 || ports[0].HostPort == 0 {
		t.Errorf("publish: %+v %v", ports, err)
	}
	if _, err := f.c.Ports(ctx, "one", PortsRequest{Publish: []string{"not-a-port"}}); err == nil {
		t.Error("a bad port spec was taken")
	}
	if err := f.c.Remove(ctx, "one", false); err == nil {
		t.Error("a running sandbox was removed without force")
	} else if s, c := apiCode(err); s != 409 || c != "conflict" {
		t.Errorf("remove of a running sandbox: %d %s", s, c)
	}
	if in, err := f.c.Stop(ctx, "one"); err != nil || in.Status != sandbox.StatusStopped {
		t.Errorf("stop: %+v %v", in, err)
	}
	if _, err := f.c.Exec(ctx, "one", ExecRequest{Argv: []string{"true"}}, nil, nil); err == nil {
		t.Error("exec in a stopped sandbox worked")
	}
	if in, err := f.c.Start(ctx, "one"); err != nil || in.Status != sandbox.StatusRunning {
		t.Errorf("start: %+v %v", in, err)
	}
	if err := f.c.Remove(ctx, "one", true); err != nil {
		t.Errorf("remove -f: %v", err)
	}
	if _, err := f.c.Get(ctx, "one"); err == nil {
		t.Error("the removed sandbox is found")
	} else if s, c := apiCode(err); s != 404 || c != "not_found" {
		t.Errorf("get of a removed sandbox: %d %s", s, c)
	}
}

// TestAPIToken: on TCP every route wants the bearer token.
func TestAPIToken(t *testing.T) {
	const token = "0123456789abcdef-token"
	f := newAPI(t, token, true)
	ctx := t.Context()
	if _, err := f.c.List(ctx); err != nil {
		t.Fatalf("with the token: %v", err)
	}
	// Found by the eighth outside review: refused clients kept their
	// connections alive and filled the listener's slots. A refusal
	// closes the connection.
	if resp, err := f.c.HTTP.Get(f.c.Base + "/v1/version"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != 401 || !resp.Close {
			t.Errorf("refused request: status %d, connection kept %v", resp.StatusCode, !resp.Close)
		}
	}
	for _, tok := range []string{"", "wrong-token-0123456789"} {
		c := *f.c
		c.Token = tok
		if _, err := c.List(ctx); err == nil {
			t.Errorf("token %q let in", tok)
		} else if s, _ := apiCode(err); s != 401 {
			t.Errorf("token %q: status %d, want 401", tok, s)
		}
	}
}

// TestAPIEvents: a start's events reach an events stream.
func TestAPIEvents(t *testing.T) {
	f := newAPI(t, "", false)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	evs, err := f.c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Create(ctx, CreateRequest{Name: "ev", Workspace: f.ws}); err != nil {
		t.Fatal(err)
	}
	for ev := range evs {
		if ev.Sandbox == "ev" && ev.Kind == lifecycle.Detail {
			return
		}
	}
	t.Error("no event of the start came")
}

// TestOpenAPI: api/openapi.json lists exactly the routes the daemon
// serves.
func TestOpenAPI(t *testing.T) {
	data, err := os.ReadFile("../../api/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi %q", doc.OpenAPI)
	}
	served := map[string]bool{}
	for _, rt := range Routes {
		key := strings.ToLower(rt.Method) + " " + rt.Path
		served[key] = true
		if _, ok := doc.Paths[rt.Path][strings.ToLower(rt.Method)]; !ok {
			t.Errorf("the document lacks %s %s", rt.Method, rt.Path)
		}
	}
	for p, ops := range doc.Paths {
		for op := range ops {
			if op == "parameters" {
				continue
			}
			if !served[op+" "+p] {
				t.Errorf("the document has %s %s, which the daemon does not serve", op, p)
			}
		}
	}
}

// ListenUnix refuses a folder another user could swap the socket in.
func TestListenUnixFolder(t *testing.T) {
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if l, err := ListenUnix(filepath.Join(open, "d.sock")); err == nil {
		l.Close()
		t.Error("listened in a world-writable folder")
	}
	if os.Geteuid() == 0 {
		theirs := filepath.Join(t.TempDir(), "theirs")
		os.Mkdir(theirs, 0o700)
		os.Chown(theirs, 1000, 1000)
		if l, err := ListenUnix(filepath.Join(theirs, "d.sock")); err == nil {
			l.Close()
			t.Error("listened in another user's folder")
		}
	}
	mine := filepath.Join(t.TempDir(), "mine")
	l, err := ListenUnix(filepath.Join(mine, "d.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := ListenUnix(filepath.Join(mine, "d.sock")); err == nil {
		t.Error("a second daemon listened on a live socket")
	}
}
