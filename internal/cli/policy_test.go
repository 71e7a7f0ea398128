package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sbx-dev/sbx/internal/audit"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// sbxResult is the outcome of one in-process command.
type sbxResult struct {
	out, err string
	code     int
}

// runSbx runs one sbx command in process with stdin empty (not a terminal).
func runSbx(t *testing.T, args ...string) sbxResult {
	t.Helper()
	var out, errb bytes.Buffer
	root, debug := NewRoot(t.Context(), Streams{In: strings.NewReader(""), Out: &out, Err: &errb})
	root.SetArgs(args)
	err := root.Execute()
	code := Render(&errb, err, *debug)
	return sbxResult{out.String(), errb.String(), code}
}

func policyHome(t *testing.T) paths.Dirs {
	t.Helper()
	t.Setenv("SBX_HOME", t.TempDir())
	dirs, err := paths.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

func TestPolicyFirstUseNoTerminal(t *testing.T) {
	dirs := policyHome(t)
	r := runSbx(t, "policy", "ls")
	if r.code != 0 || !strings.Contains(r.err, "no network policy chosen yet; using balanced") {
		t.Fatalf("first ls: %+v", r)
	}
	if !strings.Contains(r.out, "default: balanced") || !strings.Contains(r.out, "api.anthropic.com") || !strings.Contains(r.out, "built-in") {
		t.Errorf("ls output:\n%s", r.out)
	}
	st, err := os.Stat(dirs.Config)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("config folder %v %v", st, err)
	}
	// Asked once only.
	if r := runSbx(t, "policy", "ls"); strings.Contains(r.err, "no network policy") {
		t.Errorf("second ls warned again: %q", r.err)
	}
}

func TestPolicyPrompt(t *testing.T) {
	for _, c := range []struct {
		in   string
		want policy.Preset
	}{
		{"\n", policy.PresetBalanced},
		{"1\n", policy.PresetAllowAll},
		{"x\n3\n", policy.PresetDenyAll},
		{"locked down\n", policy.PresetDenyAll},
	} {
		var errb bytes.Buffer
		e := &env{stderr: &errb}
		got, err := e.promptPreset(t.Context(), strings.NewReader(c.in))
		if err != nil || got != c.want {
			t.Errorf("prompt %q = %q, %v; want %q", c.in, got, err, c.want)
		}
		if !strings.Contains(errb.String(), "1) Open") || !strings.Contains(errb.String(), "3) Locked Down") {
			t.Errorf("menu:\n%s", errb.String())
		}
	}
	e := &env{stderr: &bytes.Buffer{}}
	if _, err := e.promptPreset(t.Context(), strings.NewReader("")); err == nil {
		t.Error("EOF chose a preset")
	}
}

// policySandbox makes a policy home with one sandbox "dev" in it.
func policySandbox(t *testing.T) (paths.Dirs, *sandbox.Sandbox) {
	t.Helper()
	dirs := policyHome(t)
	st := sandbox.NewStore(dirs)
	sb, err := st.Create(sandbox.Config{ID: "0123456789ab", Name: "dev", Created: time.Now()})
	if err == nil {
		err = st.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	return dirs, sb
}

func TestPolicyCommands(t *testing.T) {
	dirs, sb := policySandbox(t)

	if r := runSbx(t, "policy", "init", "deny-all"); r.code != 0 || r.out != "default network policy: deny-all (deny all; allow only what you add)\n" {
		t.Fatalf("init: %+v", r)
	}
	if r := runSbx(t, "policy", "init", "open"); r.code != 1 || !strings.Contains(r.err, `unknown default "open"`) {
		t.Errorf("init open: %+v", r)
	}

	r := runSbx(t, "policy", "allow", "network", "Example.com,**.github.io:443")
	idEx := policy.RuleID(policy.Allow, policy.Resource{Kind: policy.KindHost, Host: "example.com"}, "")
	if r.code != 0 || !strings.Contains(r.out, "allowed example.com for all sandboxes (id "+idEx+")") || !strings.Contains(r.out, "allowed **.github.io:443") {
		t.Fatalf("allow: %+v", r)
	}
	if r := runSbx(t, "policy", "allow", "network", "example.com"); !strings.Contains(r.out, "already") {
		t.Errorf("allow twice: %+v", r)
	}
	if r := runSbx(t, "policy", "deny", "network", "bad.example.com", "--sandbox", "dev"); r.code != 0 || !strings.Contains(r.out, "denied bad.example.com for sandbox dev") {
		t.Fatalf("deny --sandbox: %+v", r)
	}
	if r := runSbx(t, "policy", "allow", "network", "a..b,*"); r.code != 1 || !strings.Contains(r.err, `resource "a..b"`) || !strings.Contains(r.err, `resource "*"`) || !strings.Contains(r.err, "hint:") {
		t.Errorf("allow garbage: %+v", r)
	}
	if r := runSbx(t, "policy", "allow", "host", "x.com"); r.code != 1 || !strings.Contains(r.err, "start with the word network") {
		t.Errorf("allow host: %+v", r)
	}
	if r := runSbx(t, "policy", "allow", "network", "x.com", "--sandbox", "nope"); r.code != 1 || !strings.Contains(r.err, `no sandbox named "nope"`) {
		t.Errorf("allow unknown sandbox: %+v", r)
	}

	// ls --json.
	r = runSbx(t, "policy", "ls", "--json")
	var ls lifecycle.PolicyView
	if err := json.Unmarshal([]byte(r.out), &ls); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, r.out)
	}
	for i := range ls.Rules {
		ls.Rules[i].Created = time.Time{}
	}
	want := lifecycle.PolicyView{Default: "deny-all", Rules: []lifecycle.PolicyRule{
		{ID: idEx, Action: "allow", Resource: "example.com", Scope: "global", Origin: "user"},
		{ID: policy.RuleID(policy.Allow, policy.Resource{Kind: policy.KindAnyDepth, Host: "github.io", Port: 443}, ""), Action: "allow", Resource: "**.github.io:443", Scope: "global", Origin: "user"},
		{ID: policy.RuleID(policy.Deny, policy.Resource{Kind: policy.KindHost, Host: "bad.example.com"}, sb.Config.ID), Action: "deny", Resource: "bad.example.com", Scope: sb.Config.ID, Sandbox: "dev", Origin: "user"},
	}}
	if diff := cmp.Diff(want, ls); diff != "" {
		t.Errorf("ls --json (-want +got):\n%s", diff)
	}
	r = runSbx(t, "policy", "ls")
	if !strings.Contains(r.out, "sandbox dev") || strings.Contains(r.out, "built-in") {
		t.Errorf("ls table:\n%s", r.out)
	}

	// check.
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"example.com"}, 0, "allow example.com:443: allowed by rule allow example.com (id " + idEx + ")"},
		{[]string{"https://docs.github.io/x?y=1"}, 0, "allow docs.github.io:443: allowed by rule allow **.github.io:443"},
		{[]string{"http://docs.github.io"}, 1, "deny docs.github.io:80: no rule matches; default deny-all denies"},
		{[]string{"bad.example.com"}, 1, "deny bad.example.com:443: no rule matches; default deny-all denies"},
		{[]string{"bad.example.com", "--sandbox", "dev"}, 1, "deny bad.example.com:443: denied by rule deny bad.example.com"},
		{[]string{"10.0.0.1:5432"}, 1, "deny 10.0.0.1:5432: no rule names this address"},
		{[]string{"[2001:db8::1]:22"}, 1, "deny [2001:db8::1]:22"},
		{[]string{"localhost:8080"}, 1, "allow it with: sbx policy allow network localhost:8080"},
	} {
		r := runSbx(t, append([]string{"policy", "check", "network"}, c.args...)...)
		if r.code != c.code || !strings.Contains(r.out, c.want) {
			t.Errorf("check %v = %d\n%s%s\nwant %d and %q", c.args, r.code, r.out, r.err, c.code, c.want)
		}
	}
	if r := runSbx(t, "policy", "check", "network", "example.com"); !strings.Contains(r.out, "DNS was not consulted") {
		t.Errorf("check name output lacks the DNS note:\n%s", r.out)
	}
	r = runSbx(t, "policy", "check", "network", "example.com:22", "--json")
	var cj checkJSON
	if err := json.Unmarshal([]byte(r.out), &cj); err != nil || !cj.Allowed || cj.Rule == nil || cj.Rule.ID != idEx || cj.Port != 22 {
		t.Errorf("check --json: %v %+v", err, r)
	}

	// rm.
	if r := runSbx(t, "policy", "rm", "network", "--resource", "bad.example.com"); r.code != 1 || !strings.Contains(r.err, "sandbox rules need --sandbox") {
		t.Errorf("rm global miss: %+v", r)
	}
	if r := runSbx(t, "policy", "rm", "network", "--resource", "BAD.example.com", "--sandbox", "dev"); r.code != 0 || !strings.Contains(r.out, "removed deny bad.example.com") {
		t.Errorf("rm --sandbox: %+v", r)
	}
	if r := runSbx(t, "policy", "rm", "network", "--id", idEx); r.code != 0 || !strings.Contains(r.out, "removed allow example.com") {
		t.Errorf("rm --id: %+v", r)
	}
	if r := runSbx(t, "policy", "rm", "network", "--id", idEx); r.code != 1 || !strings.Contains(r.err, "no rule with id") {
		t.Errorf("rm --id again: %+v", r)
	}
	if r := runSbx(t, "policy", "rm", "network"); r.code != 1 || !strings.Contains(r.err, "exactly one of --resource and --id") {
		t.Errorf("rm without flags: %+v", r)
	}

	// A malformed file is reported with its line, and reset -f recovers.
	store := policy.NewStore(dirs.Config)
	if err := os.WriteFile(store.Path(), []byte("{\n  \"version\": 1,\n  \"rules\": [,]\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runSbx(t, "policy", "allow", "network", "x.com"); r.code != 1 || !strings.Contains(r.err, "policy.json line 3") || !strings.Contains(r.err, "sbx policy reset -f") {
		t.Errorf("allow over a malformed file: %+v", r)
	}
	if r := runSbx(t, "policy", "reset"); r.code != 1 || !strings.Contains(r.err, "reset -f") {
		t.Errorf("reset without terminal: %+v", r)
	}
	if r := runSbx(t, "policy", "reset", "-f"); r.code != 0 {
		t.Errorf("reset -f: %+v", r)
	}
	f, err := store.Load()
	if err != nil || f.Default != policy.PresetUnset || len(f.Rules) != 0 {
		t.Errorf("after reset: %+v %v", f, err)
	}
}

func TestPolicyLog(t *testing.T) {
	dirs := policyHome(t)
	st := sandbox.NewStore(dirs)
	sb, err := st.Create(sandbox.Config{ID: "0123456789ab", Name: "dev", Created: time.Now()})
	if err == nil {
		err = st.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	if r := runSbx(t, "policy", "log"); r.code != 0 || !strings.Contains(r.out, "no network activity") {
		t.Errorf("empty log: %+v", r)
	}
	l, err := audit.Open(filepath.Join(sb.Dir, supervisor.AuditFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		l.Log(audit.Event{Time: t0.Add(time.Duration(i) * time.Second), SandboxID: sb.Config.ID, Host: "evil.com", Port: 443, Path: audit.PathTransparent, Proto: audit.ProtoHTTPS, Reason: "no rule matches; default balanced denies"})
	}
	l.Log(audit.Event{Time: t0, SandboxID: sb.Config.ID, Host: "api.anthropic.com", Port: 443, Path: audit.PathForward, Proto: audit.ProtoHTTPS, Allowed: true})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := runSbx(t, "policy", "log", "dev")
	if r.code != 0 || !strings.Contains(r.out, "evil.com:443") || !strings.Contains(r.out, "blocked") || !strings.Contains(r.out, "api.anthropic.com:443") {
		t.Errorf("log table:\n%s%s", r.out, r.err)
	}
	r = runSbx(t, "policy", "log", "--json", "--limit", "1")
	var rows []audit.Row
	if err := json.Unmarshal([]byte(r.out), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("log --json: %v\n%s", err, r.out)
	}
	if rows[0].Host != "evil.com" || rows[0].Count != 3 || rows[0].Sandbox != "dev" || rows[0].Allowed {
		t.Errorf("log --json row: %+v", rows[0])
	}
}
