// Package agents is the table of the coding agents sbx knows how to start:
// their command lines, default templates, network domains and secrets.
package agents

import (
	"slices"
	"strings"

	"github.com/sbx-dev/sbx/internal/template"
)

// Spec is one agent sbx knows how to start.
type Spec struct {
	Name string
	// Argv is the default command line, run as user agent in the workspace.
	Argv []string
	// Template is the built-in template the agent runs in by default.
	Template string
	// Domains are the network resources the agent needs; they become
	// sandbox rules with origin "agent:NAME" (see docs/agents.md).
	Domains []string
	// Secret is the `sbx secret` service holding the agent's provider
	// credential, "" when it has none of its own.
	Secret string
}

// All is the table of known agents; docs/agents.md shows the same.
// Each coding agent starts in its unattended mode: the sandbox is the
// safety boundary.
var All = []Spec{
	{Name: "shell", Argv: []string{"bash", "-l"}, Template: template.DefaultName},
	{
		Name: "claude", Argv: []string{"claude", "--dangerously-skip-permissions"}, Template: template.AgentsName,
		Domains: []string{"api.anthropic.com", "statsig.anthropic.com", "console.anthropic.com", "claude.ai", "platform.claude.com"},
		Secret:  "anthropic",
	},
	{
		Name: "codex", Argv: []string{"codex", "--dangerously-bypass-approvals-and-sandbox"}, Template: template.AgentsName,
		Domains: []string{"api.openai.com", "auth.openai.com", "chatgpt.com"},
		Secret:  "openai",
	},
	{
		Name: "gemini", Argv: []string{"gemini", "--yolo"}, Template: template.AgentsName,
		Domains: []string{"generativelanguage.googleapis.com", "cloudcode-pa.googleapis.com", "oauth2.googleapis.com"},
		Secret:  "google",
	},
	{
		Name: "copilot", Argv: []string{"copilot", "--yolo"}, Template: template.AgentsName,
		Domains: []string{"*.githubcopilot.com", "api.github.com", "github.com", "copilot-proxy.githubusercontent.com"},
		Secret:  "github",
	},
	{
		Name: "opencode", Argv: []string{"opencode"}, Template: template.AgentsName,
		Domains: []string{"opencode.ai", "*.opencode.ai", "models.dev"},
	},
}

// Find returns the agent called name.
func Find(name string) (Spec, bool) {
	for _, a := range All {
		if a.Name == name {
			return a, true
		}
	}
	return Spec{}, false
}

// Names lists the agents, for messages.
func Names() string {
	var n []string
	for _, a := range All {
		n = append(n, a.Name)
	}
	return strings.Join(n, ", ")
}

// Argv applies the arguments given after "--" to the agent's command:
// when the first starts with "-" they are appended to the default
// arguments, else they replace the default arguments (the agent's program
// stays).
func Argv(a Spec, extra []string) []string {
	if len(extra) == 0 {
		return slices.Clone(a.Argv)
	}
	if strings.HasPrefix(extra[0], "-") {
		return append(slices.Clone(a.Argv), extra...)
	}
	return append([]string{a.Argv[0]}, extra...)
}

// LoginArgv runs argv through a login shell, so /etc/profile,
// /etc/profile.d and /etc/sandbox-persistent.sh set the agent's
// environment as they do for `bash -l`. The shell agent is one already.
func LoginArgv(a Spec, argv []string) []string {
	if a.Name == "shell" && len(argv) > 0 && argv[0] == "bash" {
		return argv
	}
	return append([]string{"bash", "-lc", `exec "$@"`, "bash"}, argv...)
}

// Origin is the origin of the rules an agent brings ("agent:NAME").
func Origin(a Spec) string { return "agent:" + a.Name }
