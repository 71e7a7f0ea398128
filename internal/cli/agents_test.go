package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/template"
)

func TestAgentTable(t *testing.T) {
	for _, a := range agents {
		if a.Name != "shell" && a.Template != "agents" {
			t.Errorf("%s runs in template %q", a.Name, a.Template)
		}
		for _, d := range a.Domains {
			r, err := policy.ParseResource(d)
			if err != nil || !r.IsHostPattern() {
				t.Errorf("%s: domain %q: %v", a.Name, d, err)
			}
		}
	}
	for name, want := range map[string]string{
		"claude":  "claude --dangerously-skip-permissions",
		"codex":   "codex --dangerously-bypass-approvals-and-sandbox",
		"gemini":  "gemini --yolo",
		"copilot": "copilot --yolo",
		"shell":   "bash -l",
	} {
		a, ok := findAgent(name)
		if !ok || strings.Join(a.Argv, " ") != want {
			t.Errorf("%s: %v", name, a.Argv)
		}
	}
	a, _ := findAgent("claude")
	got := strings.Join(loginArgv(a, agentArgv(a, []string{"--version"})), " ")
	if got != `bash -lc exec "$@" bash claude --dangerously-skip-permissions --version` {
		t.Errorf("login argv %q", got)
	}
	s, _ := findAgent("shell")
	if got := loginArgv(s, agentArgv(s, []string{"-c", "true"})); strings.Join(got, " ") != "bash -l -c true" {
		t.Errorf("shell argv %q", got)
	}
}

func TestWarnTemplateAgent(t *testing.T) {
	codex, _ := findAgent("codex")
	shell, _ := findAgent("shell")
	for _, c := range []struct {
		tmpl  template.Template
		agent agentSpec
		warn  bool
	}{
		{template.Template{Name: "shell", Source: "debootstrap bookworm"}, codex, true},
		{template.Template{Name: "mine", Source: "sandbox x (agents)", Agents: []string{"claude"}}, codex, true},
		{template.Template{Name: "agents", Source: "debootstrap bookworm", Agents: []string{"claude", "codex"}}, codex, false},
		{template.Template{Name: "img", Source: "image example.test/a@sha256:00"}, codex, false},
		{template.Template{Name: "shell", Source: "debootstrap bookworm"}, shell, false},
	} {
		var errb bytes.Buffer
		e := &env{stderr: &errb}
		e.warnTemplateAgent(c.tmpl, c.agent)
		if got := strings.Contains(errb.String(), "may be missing"); got != c.warn {
			t.Errorf("%s/%s: warned %v (%q), want %v", c.tmpl.Name, c.agent.Name, got, errb.String(), c.warn)
		}
	}
}

// TestAgentDomains: an agent's domains become sandbox rules with their
// origin, except under deny-all without --allow-agent-domains.
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
		dirs := policyHome(t)
		var errb bytes.Buffer
		e := &env{dirs: dirs, stderr: &errb}
		if c.preset != policy.PresetUnset {
			if err := e.policyStore().Update(func(f *policy.File) error { f.Default = c.preset; return nil }); err != nil {
				t.Fatal(err)
			}
		}
		a, _ := findAgent("codex")
		got := e.wantAgentDomains(a, &createFlags{allowAgentDomains: c.allow})
		if got != c.want {
			t.Errorf("%s allow=%v: want rules %v, got %v", c.preset, c.allow, c.want, got)
		}
		if !got && !strings.Contains(errb.String(), "--allow-agent-domains") {
			t.Errorf("%s: no hint on stderr: %q", c.preset, errb.String())
		}
		rules, err := agentRules(a)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range rules {
			if got && r.Origin == "agent:codex" && r.Action == policy.Allow {
				n++
			}
		}
		if want := map[bool]int{true: len(a.Domains), false: 0}[c.want]; n != want {
			t.Errorf("%s allow=%v: %d agent rules, want %d", c.preset, c.allow, n, want)
		}
	}
}
