package lifecycle

import (
	"path/filepath"
	"strings"

	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// E2BWorkRoot is the folder holding the E2B sandboxes' workspaces.
func E2BWorkRoot(d paths.Dirs) string { return d.Data + "-e2b" }

func wsErr(hint, format string, args ...any) error {
	e := invalid(nil, hint, format, args...)
	e.Field = "workspace"
	return e
}

// CheckWorkspaces refuses a workspace that is, holds or lies inside
// one of sbx's own folders (data, config, cache, runtime): the guest would
// read and write the sandboxes' config.json and boot.json, policy.json,
// the proxy CA's key, the secret store, templates and control sockets,
// all of which sbx (often root) trusts. Invalid on "workspace". `sbx run claude ~` is the usual
// way to get there. It runs at create and at every start, so a config
// written before this check, or edited since, does not bypass it.
func (m *Manager) CheckWorkspaces(ws []sandbox.Workspace) error {
	folders := []struct{ what, dir, hint string }{
		{"state", m.Dirs.Data, "set SBX_HOME elsewhere"},
		{"configuration", m.Dirs.Config, "set SBX_HOME elsewhere"},
		{"cache", m.Dirs.Cache, "set SBX_CACHE_DIR elsewhere"},
		{"runtime", m.Dirs.Runtime, "set XDG_RUNTIME_DIR elsewhere"},
	}
	// The E2B workspaces root holds every E2B sandbox's workspace: one
	// sandbox may have its own folder inside it, none the whole root.
	e2bRoot := ""
	if m.Dirs.Data != "" {
		e2bRoot = E2BWorkRoot(m.Dirs)
	}
	for _, w := range ws {
		wsPaths := realAndClean(w.Path)
		for _, f := range folders {
			if f.dir == "" {
				continue
			}
			for _, d := range realAndClean(f.dir) {
				for _, p := range wsPaths {
					switch {
					case pathWithin(d, p):
						return wsErr("choose a project folder inside it, or "+f.hint,
							"workspace %s holds sbx's %s folder %s, which the sandbox must not reach", w.Path, f.what, f.dir)
					case pathWithin(p, d):
						return wsErr("choose a project folder outside it, or "+f.hint,
							"workspace %s lies inside sbx's %s folder %s, which the sandbox must not reach", w.Path, f.what, f.dir)
					}
				}
			}
		}
		if e2bRoot == "" {
			continue
		}
		for _, d := range realAndClean(e2bRoot) {
			for _, p := range wsPaths {
				if pathWithin(d, p) {
					return wsErr("choose a project folder of your own",
						"workspace %s holds the E2B sandboxes' workspaces %s, which no sandbox may reach", w.Path, e2bRoot)
				}
			}
		}
	}
	return nil
}

// realAndClean is p cleaned and, when it differs, p with symlinks
// resolved: of its longest existing ancestor when p does not exist yet
// (the runtime folder is made at the first start).
func realAndClean(p string) []string {
	p = filepath.Clean(p)
	out := []string{p}
	rest := ""
	for cur := p; ; {
		if real, err := filepath.EvalSymlinks(cur); err == nil {
			real = filepath.Join(real, rest)
			if real != p {
				out = append(out, real)
			}
			return out
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return out
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// pathWithin reports whether p is dir or below it (both clean, absolute).
func pathWithin(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, string(filepath.Separator))+string(filepath.Separator))
}
