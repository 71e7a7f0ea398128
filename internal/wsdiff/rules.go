package wsdiff

import (
	"path"
	"strings"
)

// Rule is one row of the table of risky changes: a path pattern (or, in
// parentheses, a kind of change) and why a change there matters.
//
// Patterns are slash-separated and relative to the workspace. "**" matches
// any number of folders (none included); other segments are path.Match
// globs. A pattern without "/" matches a name at any depth, like a
// .gitignore pattern. Only patterns anchored at the workspace root (neither
// a bare name nor starting with "**/") are looked for inside summarised
// folders; see docs/workspace-trust.md.
type Rule struct {
	Pattern string
	Reason  string
}

// Kinds of change that are risky wherever they happen; they are rows of the
// same table, named in parentheses.
const (
	ruleExecutable = "(file newly made executable)"
	ruleSetuid     = "(setuid or setgid bit set)"
	ruleSymlinkOut = "(symlink pointing outside the workspace)"
	ruleHardlink   = "(hard link to a file outside the workspace)"
	ruleSpecial    = "(fifo, socket or device file)"
	ruleRiskyDir   = "(folder of risky paths added, replaced or made a symlink)"
	ruleSymlinkIn  = "(symlink into a risky or summarised path)"
	ruleConfigPath = "(path named by core.hooksPath or include.path of the baseline .git/config)"
	ruleUnread     = "(folder that cannot be read or is too deep)"
)

// rules is THE table of risky changes. docs/workspace-trust.md carries the
// same table between its "risky-table" markers, and TestDocTable keeps the
// two in step. The first matching row gives the reason.
var rules = []Rule{
	{"**/.git/hooks/*", "git runs hooks on commit, checkout, merge, rebase and push"},
	{".git/modules/**/hooks/*", "git runs a submodule's hooks"},
	{"**/.git/config", "git runs aliases, core.hooksPath, core.fsmonitor, core.sshCommand, filters and credential helpers set here"},
	{".git/modules/**/config", "a submodule's git config: aliases, hooks path, fsmonitor, filters"},
	{"**/.git/info/attributes", "git attributes select filter, diff and merge drivers that run commands"},
	{"**/.git/config.worktree", "per-worktree git config: the same programs as .git/config"},
	{"**/.git/worktrees/*/config.worktree", "a linked worktree's git config: the same programs as .git/config"},
	{"**/.git/commondir", "points git at another repository, whose config and hooks then apply"},
	{"**/.git/info/exclude", "changes what git ignores, and what sbx diff only counts"},
	{".gitignore", "changes what git ignores, and what sbx diff only counts"},
	{".gitattributes", "git attributes select filter, diff and merge drivers that run commands"},
	{".gitmodules", "submodule URLs and update commands are fetched and run by git"},
	{".github/workflows/*", "CI runs these workflows on push"},
	{".github/actions/**", "CI runs these actions"},
	{".gitlab-ci.yml", "CI configuration"},
	{".gitlab/**", "CI configuration and templates"},
	{".circleci/**", "CI configuration"},
	{".travis.yml", "CI configuration"},
	{"Jenkinsfile", "CI configuration"},
	{"azure-pipelines.yml", "CI configuration"},
	{"bitbucket-pipelines.yml", "CI configuration"},
	{".buildkite/**", "CI configuration"},
	{".drone.yml", "CI configuration"},
	{".woodpecker.yml", "CI configuration"},
	{".woodpecker/**", "CI configuration"},
	{".pre-commit-config.yaml", "pre-commit runs these hooks on commit"},
	{".husky/**", "husky runs these git hooks"},
	{"lefthook.yml", "lefthook runs these git hooks"},
	{"Makefile", "make runs its recipes"},
	{"makefile", "make runs its recipes"},
	{"GNUmakefile", "make runs its recipes"},
	{"*.mk", "included by Makefiles; make runs its recipes"},
	{"package.json", "npm, yarn and pnpm run its scripts (install, test, build...)"},
	{".npmrc", "npm settings: registry, scripts shell, node options"},
	{".yarnrc", "yarn settings"},
	{".yarnrc.yml", "yarn settings and plugins"},
	{".pnpmfile.cjs", "pnpm runs this hook file on install"},
	{"pyproject.toml", "build backends and tools run on pip install and test"},
	{"setup.py", "pip runs it on install"},
	{"setup.cfg", "setuptools settings read on install"},
	{"conftest.py", "pytest imports it when it runs"},
	{"build.rs", "cargo runs build scripts on build"},
	{".cargo/config.toml", "cargo settings: runners, aliases, rustc wrappers"},
	{".cargo/config", "cargo settings: runners, aliases, rustc wrappers"},
	{".envrc", "direnv runs it on entering the folder"},
	{".vscode/tasks.json", "VS Code runs tasks, some on folder open"},
	{".vscode/settings.json", "VS Code settings can name programs it runs (formatters, linters, terminals)"},
	{".vscode/launch.json", "VS Code launch configurations run programs"},
	{".idea/**", "JetBrains IDE run configurations and settings"},
	{".claude/**", "Claude Code settings: hooks and MCP servers run commands on the host"},
	{".mcp.json", "MCP servers that agent CLIs start on the host"},
	{".codex/**", "Codex settings: commands and MCP servers"},
	{".gemini/**", "Gemini CLI settings: commands and MCP servers"},
	{".bashrc", "shell startup file"},
	{".bash_profile", "shell startup file"},
	{".bash_login", "shell startup file"},
	{".bash_logout", "shell startup file"},
	{".profile", "shell startup file"},
	{".zshrc", "shell startup file"},
	{".zshenv", "shell startup file"},
	{".zprofile", "shell startup file"},
	{".zlogin", "shell startup file"},
	{".config/fish/**", "shell startup files"},
	{ruleExecutable, "a file that was not executable can now be run"},
	{ruleSetuid, "runs with its owner's or group's rights"},
	{ruleSymlinkOut, "host tools that follow it read or write outside the workspace"},
	{ruleHardlink, "writes to it change a file outside the workspace"},
	{ruleSpecial, "host tools that open it may hang or touch a device"},
	{ruleRiskyDir, "what is put inside it is run by the host tools named above, and a symlink sends their reads elsewhere"},
	{ruleSymlinkIn, "writes through it reach a path host tools run, or one only counted"},
	{ruleConfigPath, "git runs the hooks and reads the config it finds there"},
	{ruleUnread, "what is inside it is not shown and may be anything"},
}

// Rules returns the table of risky changes, in order.
func Rules() []Rule { return append([]Rule(nil), rules...) }

// reasonFor returns the reason of the kind-of-change row named by key.
func reasonFor(key string) string {
	for _, r := range rules {
		if r.Pattern == key {
			return r.Reason
		}
	}
	return ""
}

// riskyDir reports whether rel is a folder below which a path row can
// match: .git/hooks, .git, .claude, .github, .github/workflows, .vscode...
// A bare-name row (Makefile) makes no folder risky.
func riskyDir(rel string) bool {
	dir := strings.Split(rel, "/")
	for _, c := range pathRules.all {
		segs := c.segs
		if !c.anywhere {
			if prefixCouldMatch(segs, dir) {
				return true
			}
			continue
		}
		// "**/X/...": a suffix of rel that starts with X.
		rest := segs[1:]
		if len(rest) < 2 {
			continue // a bare name
		}
		for i := range dir {
			if ok, _ := path.Match(rest[0], dir[i]); ok && prefixCouldMatch(rest, dir[i:]) {
				return true
			}
		}
	}
	return false
}

// compiled is a path rule split into segments.
type compiled struct {
	idx      int // row in rules: the first matching row wins
	segs     []string
	anywhere bool // a bare name or "**/...": also matches below the root
	reason   string
}

// index finds the rows that may match a path without trying them all.
type index struct {
	all      []compiled
	names    map[string]int        // bare literal names: row
	globs    []compiled            // bare names with wildcards
	anchored map[string][]compiled // by first segment
	deep     []compiled            // "**/X/...": tried when the path has a segment X
}

var pathRules = compileRules()

func compileRules() index {
	ix := index{names: map[string]int{}, anchored: map[string][]compiled{}}
	for i, r := range rules {
		if strings.HasPrefix(r.Pattern, "(") {
			continue
		}
		p := r.Pattern
		c := compiled{idx: i, reason: r.Reason}
		bare := !strings.Contains(p, "/")
		if bare {
			p = "**/" + p
		}
		c.anywhere = strings.HasPrefix(p, "**/")
		c.segs = strings.Split(p, "/")
		ix.all = append(ix.all, c)
		switch {
		case bare && !strings.ContainsAny(r.Pattern, "*?[\\"):
			if _, dup := ix.names[r.Pattern]; !dup {
				ix.names[r.Pattern] = i
			}
		case bare:
			ix.globs = append(ix.globs, c)
		case c.anywhere:
			ix.deep = append(ix.deep, c)
		default:
			ix.anchored[c.segs[0]] = append(ix.anchored[c.segs[0]], c)
		}
	}
	return ix
}

// RiskyPath returns the reason of the first path row that matches rel (a
// slash-separated path relative to the workspace), or "".
func RiskyPath(rel string) string {
	best := -1
	try := func(c compiled, segs []string) {
		if (best < 0 || c.idx < best) && matchSegs(c.segs, segs) {
			best = c.idx
		}
	}
	base := rel[strings.LastIndexByte(rel, '/')+1:]
	if i, ok := pathRules.names[base]; ok {
		best = i
	}
	var segs []string
	split := func() []string {
		if segs == nil {
			segs = strings.Split(rel, "/")
		}
		return segs
	}
	for _, c := range pathRules.globs {
		if ok, _ := path.Match(c.segs[1], base); ok && (best < 0 || c.idx < best) {
			best = c.idx
		}
	}
	first := rel
	if i := strings.IndexByte(rel, '/'); i >= 0 {
		first = rel[:i]
	}
	for _, c := range pathRules.anchored[first] {
		try(c, split())
	}
	for _, c := range pathRules.deep {
		lit := c.segs[1]
		if rel == lit || strings.HasPrefix(rel, lit+"/") || strings.Contains(rel, "/"+lit+"/") || strings.HasSuffix(rel, "/"+lit) {
			try(c, split())
		}
	}
	if best < 0 {
		return ""
	}
	return rules[best].Reason
}

func matchSegs(pat, segs []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			rest := pat[1:]
			if len(rest) == 0 {
				return len(segs) > 0
			}
			for i := 0; i <= len(segs); i++ {
				if matchSegs(rest, segs[i:]) {
					return true
				}
			}
			return false
		}
		if len(segs) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], segs[0]); !ok {
			return false
		}
		pat, segs = pat[1:], segs[1:]
	}
	return len(segs) == 0
}

// anchoredUnder reports whether a rule anchored at the root could match a
// path inside the folder dir: such folders are never summarised.
func anchoredUnder(dir []string) bool {
	for _, c := range pathRules.all {
		if c.anywhere {
			continue
		}
		if prefixCouldMatch(c.segs, dir) {
			return true
		}
	}
	return false
}

// prefixCouldMatch reports whether pattern pat could match some path that
// starts with the folders dir.
func prefixCouldMatch(pat, dir []string) bool {
	for len(dir) > 0 {
		if len(pat) == 0 {
			return false
		}
		if pat[0] == "**" {
			return true
		}
		if ok, _ := path.Match(pat[0], dir[0]); !ok {
			return false
		}
		pat, dir = pat[1:], dir[1:]
	}
	return len(pat) > 0
}
