package cli

import (
	"slices"
	"strings"
)

// agentSpec is one agent sbx knows how to start.
type agentSpec struct {
	Name string
	// Argv is the default command line, run as user agent in the workspace.
	Argv []string
}

// agents is the table of known agents. Coding agent CLIs (claude, codex,
// gemini, copilot, opencode) arrive with their templates.
var agents = []agentSpec{
	{Name: "shell", Argv: []string{"bash", "-l"}},
}

func findAgent(name string) (agentSpec, bool) {
	for _, a := range agents {
		if a.Name == name {
			return a, true
		}
	}
	return agentSpec{}, false
}

func agentNames() string {
	var n []string
	for _, a := range agents {
		n = append(n, a.Name)
	}
	return strings.Join(n, ", ")
}

// agentArgv applies the arguments given after "--" to the agent's command:
// when the first starts with "-" they are appended to the default
// arguments, else they replace the default arguments (the agent's program
// stays).
func agentArgv(a agentSpec, extra []string) []string {
	if len(extra) == 0 {
		return slices.Clone(a.Argv)
	}
	if strings.HasPrefix(extra[0], "-") {
		return append(slices.Clone(a.Argv), extra...)
	}
	return append([]string{a.Argv[0]}, extra...)
}
