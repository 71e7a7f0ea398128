package agents

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sbx-dev/sbx/internal/policy"
)

func TestAgentTable(t *testing.T) {
	for _, a := range All {
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
		a, ok := Find(name)
		if !ok || strings.Join(a.Argv, " ") != want {
			t.Errorf("%s: %v", name, a.Argv)
		}
	}
	a, _ := Find("claude")
	got := strings.Join(LoginArgv(a, Argv(a, []string{"--version"})), " ")
	if got != `bash -lc exec "$@" bash claude --dangerously-skip-permissions --version` {
		t.Errorf("login argv %q", got)
	}
	s, _ := Find("shell")
	if got := LoginArgv(s, Argv(s, []string{"-c", "true"})); strings.Join(got, " ") != "bash -l -c true" {
		t.Errorf("shell argv %q", got)
	}
	if Origin(a) != "agent:claude" {
		t.Errorf("origin %q", Origin(a))
	}
}

func TestAgentArgv(t *testing.T) {
	shell, _ := Find("shell")
	for _, c := range []struct {
		extra, want []string
	}{
		{nil, []string{"bash", "-l"}},
		{[]string{"-c", "make test"}, []string{"bash", "-l", "-c", "make test"}},
		{[]string{"script.sh", "arg"}, []string{"bash", "script.sh", "arg"}},
	} {
		if diff := cmp.Diff(c.want, Argv(shell, c.extra)); diff != "" {
			t.Errorf("Argv(%q) (-want +got):\n%s", c.extra, diff)
		}
	}
	if shell.Argv[1] != "-l" {
		t.Fatal("Argv modified the agent table")
	}
}
