package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/sbx-dev/sbx/internal/safefile"
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
// that --protect-defaults keeps read-only. A missing one is reported.
var DefaultProtected = []string{".git/hooks", ".git/config"}

// DefaultProtectedIfPresent are the paths --protect-defaults also keeps
// read-only when they exist: git reads hooks and configuration through
// them (commondir names the folder git takes hooks and config from;
// config.worktree is read after config). Usually absent, so not reported.
var DefaultProtectedIfPresent = []string{".git/commondir", ".git/config.worktree"}

// ErrProtectLink is returned for a default protected path that is, or is
// reached through, a symlink inside the workspace: the agent could replace
// the link, which a mount cannot keep.
var ErrProtectLink = errors.New("is a symlink the agent could replace")

// ErrProtectHardLink is returned for a protected file with more than one
// hard link: writing another name of it changes the protected file.
var ErrProtectHardLink = errors.New("has other hard links")

// ErrProtectCommonDir is returned when .git/commondir names a folder
// outside .git: git would take hooks and config from there.
var ErrProtectCommonDir = errors.New(".git/commondir points outside .git")

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
		// ENOTDIR: a file on the way, as .git is in a worktree.
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
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
	// Notes say what else the plan does or leaves out, for the user (at
	// creation) and supervisor.log (at each start).
	Notes []string
}

// PlanNotes returns what protection of cfg will not cover or adds (one
// sentence each), or the error that would fail the sandbox's start. The
// CLI shows both at creation.
func PlanNotes(cfg sandbox.Config) ([]string, error) {
	if !Protected(cfg) {
		return nil, nil
	}
	plan, err := planProtect(cfg)
	var notes []string
	var missing []string
	for i, m := range plan.Missing {
		missing = append(missing, strings.TrimPrefix(m, filepath.Dir(filepath.Dir(m))+"/"))
		if w := filepath.Dir(filepath.Dir(m)); i == len(plan.Missing)-1 || filepath.Dir(filepath.Dir(plan.Missing[i+1])) != w {
			notes = append(notes, fmt.Sprintf("%s has no %s, so the agent could create it unprotected; sbx protects it from the next start on once it exists", w, strings.Join(missing, " or ")))
			missing = nil
		}
	}
	return append(notes, plan.Notes...), err
}

// planProtect resolves the sandbox's protected paths (the configured ones
// and, with defaults, DefaultProtected in each writable workspace) and
// returns the mounts that enforce them. A configured path that no longer
// exists or now resolves outside the workspaces is an error (fail closed);
// a missing default is listed in Missing. See also protectDefaults and
// protectLinks.
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
			p, err := protectDefaults(w.Path, cfg.Workspaces, &plan)
			paths = append(paths, p...)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	more, err := protectLinks(paths, cfg.Workspaces, &plan)
	if err != nil {
		errs = append(errs, err)
	}
	paths = append(paths, more...)
	if err := errors.Join(errs...); err != nil {
		return plan, err
	}
	plan.Steps = mountSteps(paths, cfg.Workspaces)
	return plan, nil
}

// protectDefaults returns the default paths to protect in workspace w.
// Where .git is a file (a worktree or submodule checkout: "gitdir: ..."),
// the file itself is protected, since the agent could point it elsewhere,
// and the hooks and config in the folder it names are not. A default path
// that is or goes through a symlink is refused (ErrProtectLink), as is a
// .git/commondir naming a folder outside .git (ErrProtectCommonDir).
func protectDefaults(w string, ws []sandbox.Workspace, plan *protectPlan) ([]string, error) {
	git := filepath.Join(w, ".git")
	fi, err := os.Lstat(git)
	switch {
	case errors.Is(err, os.ErrNotExist):
		for _, d := range DefaultProtected {
			plan.Missing = append(plan.Missing, filepath.Join(w, d))
		}
		return nil, nil
	case err != nil:
		return nil, err
	case fi.Mode()&os.ModeSymlink != 0:
		target, _ := os.Readlink(git)
		return nil, fmt.Errorf("--protect-defaults: %s %w (to %s): replace it with the folder itself (or a \"gitdir:\" file), or leave --protect-defaults out and --protect what you need", git, ErrProtectLink, target)
	case fi.Mode().IsRegular():
		gitdir := "the folder it names"
		if data, err := readSmall(git); err == nil {
			gitdir = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(data)), "gitdir:"))
		}
		plan.Notes = append(plan.Notes, fmt.Sprintf("%s is a file (a worktree or submodule checkout), so there is no %s: the file is protected, but the hooks and config git reads through it (in %s) are not; --protect them if they lie inside a workspace", git, strings.Join(DefaultProtected, " or "), gitdir))
		return []string{git}, nil
	case !fi.IsDir():
		return nil, fmt.Errorf("--protect-defaults: %s is neither a folder nor a file", git)
	}
	var paths []string
	var errs []error
	for i, d := range append(slices.Clone(DefaultProtected), DefaultProtectedIfPresent...) {
		p := filepath.Join(w, d)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if i < len(DefaultProtected) {
				plan.Missing = append(plan.Missing, p)
			}
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			errs = append(errs, fmt.Errorf("--protect-defaults: %s %w (to %s): the agent could delete the link and make an unprotected %s; replace the link with the folder or file itself, or leave --protect-defaults out and --protect what you need", p, ErrProtectLink, target, d))
			continue
		}
		if d == ".git/commondir" {
			data, err := readSmall(p)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			dir := strings.TrimSpace(string(data))
			if !filepath.IsAbs(dir) {
				dir = filepath.Join(git, dir)
			}
			if !within(filepath.Clean(dir), git) {
				errs = append(errs, fmt.Errorf("--protect-defaults: %s: %w (to %s): git takes hooks and config from there, which sbx does not protect; --protect that folder's hooks and config, or leave --protect-defaults out", p, ErrProtectCommonDir, dir))
				continue
			}
		}
		r, _, err := ResolveProtect(p, ws)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		paths = append(paths, r)
	}
	return paths, errors.Join(errs...)
}

// protectLinks checks the protected paths (files, and everything in
// protected folders) and returns what else to protect. A symlink in a
// protected folder whose target lies inside a workspace leads the agent
// to a writable file (say .git/hooks/pre-commit -> ../../scripts/hook):
// the target is protected too, and so on through links in it. A link to
// a target that does not exist there is noted: the agent could create it.
// A regular file with more than one hard link is refused
// (ErrProtectHardLink): the agent could write it through another name.
func protectLinks(paths []string, ws []sandbox.Workspace, plan *protectPlan) ([]string, error) {
	var more []string
	var errs []error
	covered := func(p string) bool {
		for _, q := range append(slices.Clone(paths), more...) {
			if within(p, q) {
				return true
			}
		}
		return false
	}
	todo := slices.Clone(paths)
	for len(todo) > 0 {
		root := todo[0]
		todo = todo[1:]
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				target, err := filepath.EvalSymlinks(p)
				if err != nil {
					raw, _ := os.Readlink(p)
					lex := raw
					if !filepath.IsAbs(lex) {
						lex = filepath.Join(filepath.Dir(p), raw)
					}
					if outermost(filepath.Clean(lex), ws) != "" {
						plan.Notes = append(plan.Notes, fmt.Sprintf("%s is a symlink to %s, which does not exist: the agent could create it", p, raw))
					}
					return nil
				}
				if outermost(target, ws) == "" || covered(target) {
					return nil
				}
				plan.Notes = append(plan.Notes, fmt.Sprintf("%s is a symlink to %s in the workspace: that is protected too", p, target))
				more = append(more, target)
				todo = append(todo, target)
			case d.Type().IsRegular():
				fi, err := d.Info()
				if err != nil {
					return err
				}
				if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
					errs = append(errs, fmt.Errorf("%s %w (%d names): the agent could change it through another one; break the link on the host (cp -p %s %s.new && mv %s.new %s), or do not protect it", p, ErrProtectHardLink, st.Nlink, p, p, p, p))
				}
			}
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("check protected %s: %w", root, err))
		}
	}
	return more, errors.Join(errs...)
}

// readSmall reads a small git metadata file (at most 4 KiB), refusing
// anything but a regular file.
func readSmall(p string) ([]byte, error) { return safefile.ReadRegular(nil, p, 4096) }

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
