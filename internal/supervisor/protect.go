package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

// Protected paths (docs/workspace-trust.md): paths inside the workspaces
// that the agent may read but not change. The guest cannot be trusted to
// keep them read-only (root there can unmount and remount the 9p share), and
// QEMU's 9p server cannot refuse writes per path, so the supervisor runs in
// its own mount namespace and, before QEMU starts, bind-mounts each protected
// path onto itself read-only. Every folder between the workspace root and a
// protected path becomes a mount point too (a read-write bind onto itself),
// because a mount point cannot be renamed or removed (EBUSY): the agent
// cannot move .git away and put an unprotected .git/hooks in its place.

// DefaultProtected are the paths, relative to each writable workspace,
// that --protect-defaults keeps read-only.
var DefaultProtected = []string{".git/hooks", ".git/config"}

// ErrProtectMissing is returned for a protected path that does not exist.
var ErrProtectMissing = errors.New("protected path does not exist")

// ErrProtectOutside is returned for a protected path outside every
// workspace.
var ErrProtectOutside = errors.New("protected path is outside every workspace")

// ErrProtectNeedsRoot is returned when protection is asked for but sbx
// does not run as root, which a mount namespace needs.
var ErrProtectNeedsRoot = errors.New("protected paths need root: sbx enforces them with a mount namespace on the host")

// ResolveProtect turns a --protect value into the absolute, clean path to
// protect, with symlinks resolved on the host. A relative p is taken from
// the primary workspace (ws[0]). The result must exist and lie inside one of
// ws (whose paths are absolute and resolved); otherwise the error wraps
// ErrProtectMissing or ErrProtectOutside. viaLink reports that a symlink
// inside a workspace was on the way: the resolved target is protected, but
// the link itself is not, so the agent could point it elsewhere.
func ResolveProtect(p string, ws []sandbox.Workspace) (resolved string, viaLink bool, err error) {
	if p == "" {
		return "", false, errors.New("empty path")
	}
	if len(ws) == 0 {
		return "", false, errors.New("no workspace")
	}
	abs := p
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(ws[0].Path, abs)
	}
	abs = filepath.Clean(abs)
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", false, fmt.Errorf("%s: %w", abs, ErrProtectMissing)
		}
		return "", false, fmt.Errorf("resolve %s: %w", abs, err)
	}
	if outermost(real, ws) == "" {
		if real != abs {
			return "", false, fmt.Errorf("%s (a symlink to %s): %w", abs, real, ErrProtectOutside)
		}
		return "", false, fmt.Errorf("%s: %w", abs, ErrProtectOutside)
	}
	return real, real != abs && outermost(abs, ws) != "", nil
}

// SameProtect reports whether two sets of protected paths are equal,
// ignoring order and duplicates.
func SameProtect(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// within reports whether p is root or below it; both are clean and
// absolute.
func within(p, root string) bool {
	return p == root || strings.HasPrefix(p, strings.TrimSuffix(root, "/")+"/")
}

// outermost returns the outermost workspace root that holds p, or "".
// Workspaces may nest; the outermost one is where renames of p's parents
// can come from.
func outermost(p string, ws []sandbox.Workspace) string {
	best := ""
	for _, w := range ws {
		if within(p, w.Path) && (best == "" || len(w.Path) < len(best)) {
			best = w.Path
		}
	}
	return best
}

// mountStep is one bind mount of a path onto itself.
type mountStep struct {
	Path     string
	ReadOnly bool
}

// protectPlan is what one start of a sandbox protects.
type protectPlan struct {
	// Steps are the bind mounts in the order to make them: parents first.
	Steps []mountStep
	// Missing are default paths that do not exist and so are not
	// protected.
	Missing []string
}

// planProtect resolves the sandbox's protected paths (the configured ones
// and, with defaults, DefaultProtected in each writable workspace) and
// returns the mounts that enforce them. A configured path that no longer
// exists or now resolves outside the workspaces is an error (fail closed);
// a missing default is listed in Missing.
func planProtect(cfg sandbox.Config) (protectPlan, error) {
	var plan protectPlan
	var paths []string
	var errs []error
	for _, p := range cfg.Protect {
		r, _, err := ResolveProtect(p, cfg.Workspaces)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w (it was protected when the sandbox was created; recreate it, or remove the sandbox)", err))
			continue
		}
		paths = append(paths, r)
	}
	if cfg.ProtectDefaults {
		for _, w := range cfg.Workspaces {
			if w.ReadOnly {
				continue // all of it is read-only already
			}
			for _, d := range DefaultProtected {
				r, _, err := ResolveProtect(filepath.Join(w.Path, d), cfg.Workspaces)
				switch {
				case errors.Is(err, ErrProtectMissing):
					plan.Missing = append(plan.Missing, filepath.Join(w.Path, d))
				case errors.Is(err, ErrProtectOutside):
					// .git links out of the workspaces: the guest cannot
					// reach it.
				case err != nil:
					errs = append(errs, err)
				default:
					paths = append(paths, r)
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return plan, err
	}
	plan.Steps = mountSteps(paths, cfg.Workspaces)
	return plan, nil
}

// mountSteps returns the bind mounts that protect paths (absolute, clean,
// resolved, each inside a workspace of ws): each path read-only, and each
// folder strictly between the outermost workspace root holding it and the
// path read-write, so that none of them can be renamed or removed. The
// steps are ordered parents first (a bind made later over a parent would
// hide the mounts below it), without duplicates; a path both protected and
// a parent of another is read-only.
func mountSteps(paths []string, ws []sandbox.Workspace) []mountStep {
	ro := map[string]bool{}
	for _, p := range paths {
		root := outermost(p, ws)
		if root == "" {
			continue
		}
		ro[p] = true
		for d := filepath.Dir(p); d != root && within(d, root); d = filepath.Dir(d) {
			if _, ok := ro[d]; !ok {
				ro[d] = false
			}
		}
	}
	steps := make([]mountStep, 0, len(ro))
	for p, r := range ro {
		steps = append(steps, mountStep{Path: p, ReadOnly: r})
	}
	slices.SortFunc(steps, func(a, b mountStep) int {
		if da, db := strings.Count(a.Path, "/"), strings.Count(b.Path, "/"); da != db {
			return da - db
		}
		return strings.Compare(a.Path, b.Path)
	})
	return steps
}

// Protected reports whether a sandbox has any protection configured, and
// so needs its own mount namespace.
func Protected(cfg sandbox.Config) bool {
	return len(cfg.Protect) > 0 || cfg.ProtectDefaults
}
