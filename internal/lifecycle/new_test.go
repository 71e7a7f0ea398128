package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sbx-dev/sbx/internal/agents"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/template"
)

func newTestManager(t *testing.T) (*Manager, *[]Event) {
	t.Helper()
	base := t.TempDir()
	dirs := paths.Dirs{Data: filepath.Join(base, "d"), Config: filepath.Join(base, "c"), Cache: filepath.Join(base, "k"), Runtime: filepath.Join(base, "r")}
	m := New(dirs, nil)
	var evs []Event
	m.Events = func(e Event) { evs = append(evs, e) }
	return m, &evs
}

func TestTemplateAgentWarning(t *testing.T) {
	codex, _ := agents.Find("codex")
	shell, _ := agents.Find("shell")
	for _, c := range []struct {
		tmpl  template.Template
		agent agents.Spec
		warn  bool
	}{
		{template.Template{Name: "shell", Source: "debootstrap bookworm"}, codex, true},
		{template.Template{Name: "mine", Source: "sandbox x (agents)", Agents: []string{"claude"}}, codex, true},
		{template.Template{Name: "agents", Source: "debootstrap bookworm", Agents: []string{"claude", "codex"}}, codex, false},
		{template.Template{Name: "img", Source: "image example.test/a@sha256:00"}, codex, false},
		{template.Template{Name: "shell", Source: "debootstrap bookworm"}, shell, false},
	} {
		w := TemplateAgentWarning(c.tmpl, c.agent)
		if got := strings.Contains(w, "may be missing"); got != c.warn {
			t.Errorf("%s/%s: warned %v (%q), want %v", c.tmpl.Name, c.agent.Name, got, w, c.warn)
		}
	}
}

// TestAgentDomains: an agent's domains become sandbox rules with their
// origin, except under deny-all without AllowAgentDomains.
func TestAgentDomains(t *testing.T) {
	for _, c := range []struct {
		preset policy.Preset
		allow  bool
		want   bool
	}{
		{policy.PresetBalanced, false, true},
		{policy.PresetUnset, false, true},
		{policy.PresetDenyAll, false, false},
		{policy.PresetDenyAll, true, true},
	} {
		m, evs := newTestManager(t)
		if c.preset != policy.PresetUnset {
			if err := policy.NewStore(m.Dirs.Config).Update(func(f *policy.File) error { f.Default = c.preset; return nil }); err != nil {
				t.Fatal(err)
			}
		}
		a, _ := agents.Find("codex")
		got := m.wantAgentDomains(a, c.allow)
		if got != c.want {
			t.Errorf("%s allow=%v: want rules %v, got %v", c.preset, c.allow, c.want, got)
		}
		if !got && (len(*evs) == 0 || !strings.Contains((*evs)[0].Text, "--allow-agent-domains")) {
			t.Errorf("%s: no warning saying how: %+v", c.preset, *evs)
		}
		rules, err := AgentRules(a)
		if err != nil || len(rules) != len(a.Domains) {
			t.Fatalf("rules %v %v", rules, err)
		}
		for _, r := range rules {
			if r.Origin != "agent:codex" || r.Action != policy.Allow {
				t.Errorf("rule %+v", r)
			}
		}
	}
}

// TestNewRequestChecks: every refused field of a request at once, each
// named, before any slow work (no template is resolved).
func TestNewRequestChecks(t *testing.T) {
	m, _ := newTestManager(t)
	ws := t.TempDir()
	_, err := m.New(context.Background(), NewRequest{
		Workspaces: []sandbox.Workspace{{Path: ws}}, Memory: "lots", Disk: "x", DockerDisk: "1m", CPUs: 99, Accel: "warp", CloneUntracked: true,
	})
	var probs Problems
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &probs) {
		t.Fatalf("err %v", err)
	}
	var fields []string
	for _, p := range probs {
		fields = append(fields, p.Field)
	}
	if got := strings.Join(fields, " "); got != "memory disk docker-disk cpus accel clone-untracked" {
		t.Errorf("fields %q (%v)", got, err)
	}
	for _, c := range []struct {
		req   NewRequest
		field string
	}{
		{NewRequest{Name: "-bad", Workspaces: []sandbox.Workspace{{Path: ws}}}, "name"},
		{NewRequest{Agent: "nope", Workspaces: []sandbox.Workspace{{Path: ws}}}, "agent"},
		{NewRequest{}, "workspace"},
		{NewRequest{Workspaces: []sandbox.Workspace{{Path: m.Dirs.Data}}}, ""},
		{NewRequest{Workspaces: []sandbox.Workspace{{Path: ws}}, Memory: "99999999g"}, "memory"},
	} {
		_, err := m.New(context.Background(), c.req)
		le, ok := AsError(err)
		if !ok || le.Code != Invalid || (c.field != "" && le.Field != c.field) {
			t.Errorf("%+v: %v (%+v)", c.req, err, le)
		}
	}
	if _, err := os.Stat(m.Dirs.Cache); err == nil {
		if ents, _ := os.ReadDir(filepath.Join(m.Dirs.Cache, "templates")); len(ents) > 0 {
			t.Errorf("a refused request built a template: %v", ents)
		}
	}
}

func TestResolveWorkspaces(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	link := filepath.Join(t.TempDir(), "l")
	os.Symlink(a, link)
	file := filepath.Join(a, "f")
	os.WriteFile(file, nil, 0o644)
	ws, err := ResolveWorkspaces([]string{link, b + ":ro"})
	if err != nil || len(ws) != 2 || ws[0].Path != a || ws[0].ReadOnly || ws[1].Path != b || !ws[1].ReadOnly {
		t.Errorf("%+v %v", ws, err)
	}
	for _, bad := range [][]string{{a + ":ro"}, {a, link}, {file}, {filepath.Join(a, "missing")}} {
		if _, err := ResolveWorkspaces(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v: %v", bad, err)
		}
	}
}

func TestDefaultName(t *testing.T) {
	m, _ := newTestManager(t)
	ws := filepath.Join(t.TempDir(), "My Project")
	n, err := m.DefaultName("codex", ws)
	if err != nil || !strings.HasPrefix(n, "codex-My") || sandbox.ValidateName(n) != nil {
		t.Errorf("%q %v", n, err)
	}
}

// Found by the tenth outside review: the network log of a sandbox that
// could not be read answered "nothing recorded".
func TestPolicyLogUnreadable(t *testing.T) {
	m, _ := newTestManager(t)
	sb := &sandbox.Sandbox{Config: sandbox.Config{Name: "logs", ID: "0123456789ab"}, Dir: t.TempDir()}
	if rows, err := m.PolicyLog([]*sandbox.Sandbox{sb}, 0); err != nil || len(rows) != 0 {
		t.Fatalf("no log yet: %v %v", rows, err)
	}
	if err := os.Mkdir(sb.Path(supervisor.AuditFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := m.PolicyLog([]*sandbox.Sandbox{sb}, 0); err == nil {
		t.Errorf("an unreadable log: %v", err)
	}
}

// Found by the tenth outside review: a full disk showed only as "cannot
// create sandbox", its cause behind --debug.
func TestInternalErrorSaysWhy(t *testing.T) {
	e := newErr(Internal, "x", fmt.Errorf("write: %w", &os.PathError{Op: "write", Path: "/d", Err: syscall.ENOSPC}), "", "cannot create sandbox %s", "x")
	if !strings.Contains(e.Error(), "no space left on device") || !strings.Contains(e.Hint, "free disk space") {
		t.Errorf("%q hint %q", e.Error(), e.Hint)
	}
}

// Found by the tenth outside review: as root without a sudo caller, the
// VMMs ran as uid 1000, which an unrelated account had.
func TestGuestIDs(t *testing.T) {
	etc := t.TempDir()
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\n"), 0o644)
	if u, g := FreeIDs(etc); u != 1000 || g != 1000 {
		t.Errorf("1000 free: %d:%d", u, g)
	}
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/bin/sh\ncloudsdk:x:1000:1000::/home/c:/bin/sh\nx:x:60100:60100::/:/bin/false\n"), 0o644)
	if u, g := FreeIDs(etc); u != 60101 || g != 60101 {
		t.Errorf("1000 and 60100 taken: %d:%d", u, g)
	}
	if os.Getuid() == 0 && os.Getenv("SUDO_UID") == "" {
		ws := t.TempDir()
		os.Chown(ws, 4242, 4343)
		if u, g := GuestIDsFor(ws); u != 4242 || g != 4343 {
			t.Errorf("a workspace of 4242:4343: %d:%d", u, g)
		}
	}
}
