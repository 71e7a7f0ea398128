package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentCLIs: the agents template (built once per cache, as on a user's
// first `sbx run claude`) starts every agent's CLI in the VM. One sandbox
// serves every check: boots under TCG are slow.
func TestAgentCLIs(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	// The host's git identity comes from the caller's global config.
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte("[user]\n\tname = Test Person\n\temail = test@example.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.env = append(h.env, "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "SUDO_USER=")
	h.mustSbx("policy", "init", "balanced")
	res := h.mustSbx("create", "--name", "t-agents", "claude", ws)
	if strings.TrimSpace(res.stdout) != "t-agents" {
		t.Fatalf("create printed %q", res.stdout)
	}

	// The agent's own command, through `run` and its login shell: the
	// arguments after -- starting with "-" replace nothing, so this is
	// `claude --dangerously-skip-permissions --version`.
	res = h.mustSbx("run", "t-agents", "--", "--version")
	if !strings.Contains(res.stdout, "(Claude Code)") {
		t.Errorf("claude --version printed %q (stderr %q)", res.stdout, res.stderr)
	}
	for _, c := range []struct{ cmd, want string }{
		{"codex --version", "codex-cli "},
		{"gemini --version", "."},
		{"copilot --version", "GitHub Copilot CLI"},
		{"opencode --version", "."},
		{"node --version", "v24."},
		{"npm --version", "."},
	} {
		res := h.sbx("exec", "t-agents", "bash", "-lc", c.cmd)
		if res.code != 0 || !strings.Contains(res.stdout, c.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", c.cmd, res.code, res.stdout, res.stderr)
		}
	}

	// Login shells source /etc/sandbox-persistent.sh, which the agent user
	// may edit; the host's git identity is set.
	res = h.mustSbx("exec", "t-agents", "bash", "-lc",
		"echo 'export SBX_PERSIST_TEST=kept' >> /etc/sandbox-persistent.sh && "+
			"bash -lc 'echo persist=$SBX_PERSIST_TEST' && "+
			"echo name=$(git config --get user.name) email=$(git config --get user.email) && "+
			"id -nG")
	for _, want := range []string{"persist=kept", "name=Test Person email=test@example.test", "docker"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("guest setup lacks %q:\n%s", want, res.stdout)
		}
	}

	// The agent's domains are sandbox rules with their origin.
	res = h.mustSbx("policy", "ls", "--json")
	var pl struct {
		Rules []struct {
			Resource, Origin, Scope, Action string
		} `json:"rules"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &pl); err != nil {
		t.Fatalf("policy ls --json: %v\n%s", err, res.stdout)
	}
	found := false
	for _, r := range pl.Rules {
		if r.Origin == "agent:claude" && r.Resource == "api.anthropic.com" && r.Action == "allow" {
			found = true
		}
	}
	if !found {
		t.Errorf("no agent:claude rule for api.anthropic.com in %s", res.stdout)
	}

	// An unknown agent lists the known ones.
	res = h.sbx("run", "no-such-agent")
	if res.code == 0 || !strings.Contains(res.stderr, "claude, codex, gemini, copilot, opencode") {
		t.Errorf("unknown agent: exit %d, stderr %q", res.code, res.stderr)
	}
}
