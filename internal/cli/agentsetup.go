package cli

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strings"
	"time"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/template"
)

// warnTemplateAgent says when a template sbx built (a built-in one, or one
// saved from a sandbox) was built for other agents than the one about to
// run in it. Images record no agents and are not second-guessed.
func (e *env) warnTemplateAgent(t template.Template, a agentSpec) {
	builtBySbx := strings.HasPrefix(t.Source, "debootstrap") || strings.HasPrefix(t.Source, "sandbox ")
	if a.Name == "shell" || !builtBySbx || slices.Contains(t.Agents, a.Name) {
		return
	}
	builtFor := "the shell only"
	if len(t.Agents) > 0 {
		builtFor = strings.Join(t.Agents, ", ")
	}
	fmt.Fprintf(e.stderr, "sbx: warning: template %s was built for %s, not %s; %s may be missing in it\n",
		t.Name, builtFor, a.Name, a.Argv[0])
}

// hostGitIdentity reads the caller's git user.name and user.email (global
// and system configuration; under sudo, the sudo user's), or nil when git
// or both values are missing.
func hostGitIdentity(ctx context.Context) *sandbox.GitIdentity {
	git, err := exec.LookPath("git")
	if err != nil {
		return nil
	}
	env := os.Environ()
	if os.Getuid() == 0 && os.Getenv("SUDO_USER") != "" {
		if u, err := user.Lookup(os.Getenv("SUDO_USER")); err == nil && u.HomeDir != "" {
			env = append(env, "HOME="+u.HomeDir, "XDG_CONFIG_HOME="+u.HomeDir+"/.config")
		}
	}
	get := func(key string) string {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, git, "config", "--get", key)
		// Outside any repository: only the user's and the system's values.
		cmd.Dir = "/"
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	id := &sandbox.GitIdentity{Name: get("user.name"), Email: get("user.email")}
	if id.Name == "" && id.Email == "" {
		return nil
	}
	return id
}

// agentOrigin is the origin of the rules an agent brings.
func agentOrigin(a agentSpec) string { return "agent:" + a.Name }

// wantAgentDomains decides whether the agent's domains become sandbox
// rules: always, except under deny-all without --allow-agent-domains, so
// that deny-all really denies everything.
func (e *env) wantAgentDomains(a agentSpec, f *createFlags) bool {
	if len(a.Domains) == 0 {
		return false
	}
	if f.allowAgentDomains {
		return true
	}
	pf, err := e.policyStore().Load()
	if err != nil {
		// Fail closed, and say why.
		fmt.Fprintf(e.stderr, "sbx: cannot read the network policy (%v), so %s's domains are not added; fix it (`sbx policy ls`) and add them with --allow-agent-domains\n", err, a.Name)
		return false
	}
	if pf.Default.Effective() == policy.PresetDenyAll {
		fmt.Fprintf(e.stderr, "sbx: the default policy denies all network access, so %s's domains (%s) are not allowed; "+
			"add them with --allow-agent-domains or `sbx policy allow network`\n", a.Name, strings.Join(a.Domains, ", "))
		return false
	}
	return true
}

// agentRules are the agent's domains as allow rules (origin "agent:NAME")
// for a new sandbox whose configuration says so (lifecycle.CreateRequest).
// A user's deny rule still wins over them.
func agentRules(a agentSpec) ([]lifecycle.Rule, error) {
	var rules []lifecycle.Rule
	for _, d := range a.Domains {
		r, err := policy.ParseResource(d)
		if err != nil {
			return nil, fmt.Errorf("agent %s domain %q: %w", a.Name, d, err)
		}
		rules = append(rules, lifecycle.Rule{Action: policy.Allow, Resource: r, Origin: agentOrigin(a)})
	}
	return rules, nil
}
