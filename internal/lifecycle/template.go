package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/template"
)

// TemplatesDoc is where templates are documented, for hints.
const TemplatesDoc = "docs/templates.md"

var digestRe = regexp.MustCompile(`sha256:([0-9a-f]{12})[0-9a-f]{52}`)

// ShortDigests shortens the sha256 digests in a template's source.
func ShortDigests(s string) string { return digestRe.ReplaceAllString(s, "sha256:$1") }

// invalid is an Invalid *Error without a sandbox.
func invalid(cause error, hint, format string, args ...any) *Error {
	return newErr(Invalid, "", cause, hint, format, args...)
}

// TemplateUsers maps template image ids to the names of the sandboxes
// whose disks they back.
func (m *Manager) TemplateUsers() (map[string][]string, error) {
	sbs, err := m.Store.List()
	out := map[string][]string{}
	for _, sb := range sbs {
		id := sb.Config.Template.ID
		out[id] = append(out[id], sb.Config.Name)
	}
	return out, err
}

// TemplateInUse reports whether a sandbox's disk is backed by image id;
// when the sandboxes cannot all be read it says yes, so nothing is
// deleted.
func (m *Manager) TemplateInUse(id string) bool {
	users, err := m.TemplateUsers()
	return err != nil || len(users[id]) > 0
}

// RemoveTemplate removes template name (and its image and snapshots,
// unless shared); one whose image backs a sandbox's disk is a Conflict.
func (m *Manager) RemoveTemplate(name string) error {
	users, listErr := m.TemplateUsers()
	var using []string
	err := template.Remove(m.Dirs.Cache, name, func(id string) bool {
		using = users[id]
		return listErr != nil || len(using) > 0
	})
	switch {
	case err == nil:
		// The snapshots of a removed image go with it (those a sandbox
		// disk still uses stay until it is removed).
		if _, err := snapshot.Collect(m.Dirs.Cache); err != nil {
			m.Log.Debug("collect snapshots", "err", err)
		}
		return nil
	case errors.Is(err, template.ErrNotFound):
		return newErr(NotFound, "", nil, "list templates with `sbx template ls`", "no template called %q", name)
	case errors.Is(err, template.ErrInUse) && len(using) > 0:
		return newErr(Conflict, "", nil, fmt.Sprintf("remove them first: `sbx rm %s`", strings.Join(using, " ")),
			"template %s is used by sandbox %s", name, strings.Join(using, ", "))
	case errors.Is(err, template.ErrInUse):
		return newErr(Conflict, "", listErr, "run with --debug to see which sandbox folders could not be read", "cannot tell whether template %s is in use; keeping it", name)
	}
	return newErr(Internal, "", err, "", "cannot remove template %s", name)
}

// CheckTemplateName rejects a template name that load or save may not
// give.
func CheckTemplateName(name string) error {
	if template.IsBuiltin(name) {
		return invalid(nil, "choose another name", "%s is a built-in template name", name)
	}
	if template.NameFor(name) != name {
		return invalid(nil, fmt.Sprintf("use letters, digits, '.', '_' and '-', e.g. %s", template.NameFor(name)), "invalid template name %q", name)
	}
	return nil
}

// BuildTemplate builds built-in template name unless it is up to date.
func (m *Manager) BuildTemplate(ctx context.Context, name string) (template.Template, error) {
	if !template.IsBuiltin(name) {
		return template.Template{}, invalid(nil, fmt.Sprintf("the built-in templates are %s and %s; other templates come from `sbx template load` or `sbx template save`", template.DefaultName, template.AgentsName),
			"%q is not a built-in template", name)
	}
	t, err := template.Ensure(ctx, m.Dirs.Cache, name, m.progressOut())
	if err != nil {
		return t, buildErr(err, name, m.Dirs.Cache)
	}
	return t, nil
}

func buildErr(err error, name, cache string) error {
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, template.ErrNeedRoot):
		return invalid(err, fmt.Sprintf("build it once as root into your cache: sudo SBX_CACHE_DIR=%s sbx template build %s", cache, name), "building template %s needs root", name)
	}
	return newErr(Failed, "", err, "`sbx diagnose` checks the host", "cannot prepare template %s: %v", name, err)
}

// SaveTemplate makes template name of stopped (or crashed) sb's root
// disk, or with out writes it to the file out instead (and returns the
// zero Template).
func (m *Manager) SaveTemplate(ctx context.Context, sb *sandbox.Sandbox, name, out string) (template.Template, error) {
	if err := CheckTemplateName(name); err != nil {
		return template.Template{}, err
	}
	exists := func() error {
		return newErr(Conflict, "", nil, fmt.Sprintf("remove it first with `sbx template rm %s`, or choose another name", name), "template %s exists", name)
	}
	if out == "" {
		if _, err := template.Lookup(m.Dirs.Cache, name); err == nil {
			return template.Template{}, exists()
		}
	} else if abs, err := filepath.Abs(out); err != nil {
		return template.Template{}, invalid(err, "", "invalid output path %q", out)
	} else {
		out = abs
		if st, err := os.Stat(filepath.Dir(out)); err != nil || !st.IsDir() {
			return template.Template{}, invalid(err, "create the folder first", "cannot write %s: no folder %s", out, filepath.Dir(out))
		}
	}
	// The sandbox lock keeps it from starting while its disk is read.
	unlock, err := m.Lock(ctx, sb)
	if err != nil {
		return template.Template{}, err
	}
	defer unlock()
	st, err := m.Store.Status(sb)
	if err != nil {
		return template.Template{}, newErr(Internal, sb.Config.Name, err, "", "cannot read the state of sandbox %s", sb.Config.Name)
	}
	switch st.Status {
	case sandbox.StatusStopped:
	case sandbox.StatusCrashed:
		m.emit(Event{Kind: Warning, Sandbox: sb.Config.Name, Text: fmt.Sprintf("sandbox %s crashed; its file system is checked and repaired before saving", sb.Config.Name)})
	default:
		e := newErr(Conflict, sb.Config.Name, nil, fmt.Sprintf("stop it first with `sbx stop %s`, then save again", sb.Config.Name),
			"sandbox %s is %s; only a stopped sandbox's disk can be saved", sb.Config.Name, st.Status)
		e.Field = "state"
		return template.Template{}, e
	}
	opts := template.SaveOptions{
		Source:   fmt.Sprintf("sandbox %s (%s)", sb.Config.Name, sb.Config.Template.Name),
		From:     m.SandboxTemplate(sb),
		Progress: m.progressOut(),
		InUse:    m.TemplateInUse,
		Backing:  snapshot.Backing(m.Dirs.Cache),
		Replace:  func(template.Template) error { return exists() },
	}
	disk := sb.Path(sandbox.DiskFile)
	var t template.Template
	if out != "" {
		err = template.SaveFile(ctx, m.Dirs.Cache, disk, name, out, opts)
	} else {
		t, err = template.Save(ctx, m.Dirs.Cache, disk, name, opts)
	}
	if err != nil {
		return t, saveErr(err, sb)
	}
	return t, nil
}

// SandboxTemplate returns the template sb's disk was made from: the one
// with its image id, else the one with its name, else just the name.
func (m *Manager) SandboxTemplate(sb *sandbox.Sandbox) template.Template {
	ref := sb.Config.Template
	all, _ := template.List(m.Dirs.Cache)
	if i := slices.IndexFunc(all, func(t template.Template) bool { return t.ID == ref.ID }); i >= 0 {
		return all[i]
	}
	if t, err := template.Lookup(m.Dirs.Cache, ref.Name); err == nil {
		return t
	}
	return template.Template{Name: ref.Name, ID: ref.ID}
}

func saveErr(err error, sb *sandbox.Sandbox) error {
	if _, ok := AsError(err); ok || errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, fs.ErrNotExist) {
		return newErr(Failed, sb.Config.Name, err, fmt.Sprintf("the sandbox's disk is gone; remove it with `sbx rm %s`", sb.Config.Name), "cannot read the disk of sandbox %s", sb.Config.Name)
	}
	return newErr(Failed, sb.Config.Name, err, "run with --debug for the cause", "cannot save sandbox %s", sb.Config.Name)
}

// LoadTemplate makes a template of the image file at path (as given):
// named name, else after the image. A template of the same name loaded
// from the same file is replaced; one from anywhere else only with
// force.
func (m *Manager) LoadTemplate(ctx context.Context, path, name string, force bool) (template.Template, error) {
	if name != "" {
		if err := CheckTemplateName(name); err != nil {
			return template.Template{}, err
		}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return template.Template{}, invalid(err, "", "invalid path %q", path)
	}
	t, err := template.LoadFile(ctx, m.Dirs.Cache, abs, template.ImportOptions{
		Name: name, Progress: m.progressOut(), InUse: m.TemplateInUse,
		Replace: loadReplace(path, abs, force),
	})
	if err != nil {
		return t, importErr(err, path)
	}
	return t, nil
}

// loadReplace says whether `template load` of the file at abs (given as
// path) may replace template old: when old was loaded from the same path,
// or with force.
func loadReplace(path, abs string, force bool) func(old template.Template) error {
	return func(old template.Template) error {
		if force || strings.HasPrefix(old.Source, "file "+abs+"@") {
			return nil
		}
		return newErr(Conflict, "", nil, fmt.Sprintf("load it under another name with `sbx template load %s --name NEW`, or replace %s with --force", path, old.Name),
			"template %s exists and came from elsewhere (%s)", old.Name, ShortDigests(old.Source))
	}
}

// importErr turns an error of loading or pulling an image into a message
// for people.
func importErr(err error, what string) error {
	if _, ok := AsError(err); ok || errors.Is(err, context.Canceled) {
		return err
	}
	if mu, ok := errors.AsType[*template.MissingUserError](err); ok {
		return invalid(err, "an image needs a user "+mu.User+" with uid 1000 and its group (add them in its Dockerfile, e.g. `RUN useradd -m -u 1000 agent`); see "+TemplatesDoc,
			"image %s is missing user %s: %s", what, mu.User, mu.Reason)
	}
	switch {
	case errors.Is(err, template.ErrNeedRoot):
		return invalid(err, "run it with sudo", "loading image %s needs root: its files keep their owners", what)
	case errors.Is(err, template.ErrUnknownFormat):
		return invalid(err, "give a `docker save` tarball, an OCI image layout folder or archive, or a file from `sbx template save -o`",
			"%s is not an image file sbx reads", what)
	case errors.Is(err, template.ErrBuiltinName):
		return invalid(err, "choose another name with --name", "an image cannot take a built-in template's name")
	case errors.Is(err, template.ErrNoSpace):
		return newErr(Failed, "", err, "free space on the cache's file system (`sbx template rm` unused templates), or check that the image is what you expect: sbx writes at most 64 GiB for one image and always leaves 2 GiB free",
			"not enough disk space to load image %s", what)
	case errors.Is(err, template.ErrUnsafeEntry):
		return invalid(err, "the image is malformed or hostile; rebuild it", "refusing image %s: an entry points outside its root file system", what)
	case errors.Is(err, fs.ErrNotExist):
		return newErr(NotFound, "", err, "check the path", "no file or folder %s", what)
	}
	return newErr(Failed, "", err, "run with --debug for the cause", "cannot load image %s", what)
}

// ResolveTemplate returns the template a new sandbox boots from. ref
// may be empty (def, the agent's built-in template, built on first use),
// a template name (built-in names are built on first use), a path to an
// image file or folder (loaded once; a later use of the same content
// reuses the template) or a registry reference (pulled; when the
// registry cannot be reached, a template pulled from the same reference
// before is used with a warning).
func (m *Manager) ResolveTemplate(ctx context.Context, ref, def string) (template.Template, error) {
	name := ref
	if name == "" {
		name = def
	}
	if template.IsBuiltin(name) {
		t, err := template.Ensure(ctx, m.Dirs.Cache, name, m.progressOut())
		if err != nil {
			return t, buildErr(err, name, m.Dirs.Cache)
		}
		return t, nil
	}
	t, err := template.Lookup(m.Dirs.Cache, name)
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, template.ErrNotFound) && !strings.ContainsAny(name, "/\\") {
		return t, newErr(Internal, "", err, fmt.Sprintf("remove it with `sbx template rm %s`", name), "cannot read template %s", name)
	}
	if _, serr := os.Stat(ref); serr == nil || strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, ".") {
		return m.templateFromFile(ctx, ref)
	}
	if template.IsImageRef(ref) {
		return m.templateFromRegistry(ctx, ref)
	}
	e := newErr(NotFound, "", nil, "list templates with `sbx template ls`; load an image file with `sbx template load FILE`, or give a registry reference as REGISTRY/REPO:TAG",
		"no template called %q", name)
	e.Field = "template"
	return t, e
}

// templateFromFile loads the image file at path as a template, or reuses
// the template loaded from the same path and content before.
func (m *Manager) templateFromFile(ctx context.Context, path string) (template.Template, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return template.Template{}, invalid(err, "", "invalid path %q", path)
	}
	if src, err := template.FileSource(m.Dirs.Cache, abs); err == nil {
		all, _ := template.List(m.Dirs.Cache)
		if i := slices.IndexFunc(all, func(t template.Template) bool { return t.Source == src }); i >= 0 {
			return all[i], nil
		}
	}
	t, err := template.LoadFile(ctx, m.Dirs.Cache, abs, template.ImportOptions{
		Progress: m.progressOut(), InUse: m.TemplateInUse,
		Replace: func(old template.Template) error {
			if strings.HasPrefix(old.Source, "file "+abs+"@") {
				return nil
			}
			return newErr(Conflict, "", nil, fmt.Sprintf("load the file under another name with `sbx template load %s --name NEW`, then use -t NEW", path),
				"template %s exists and came from elsewhere (%s)", old.Name, ShortDigests(old.Source))
		},
	})
	if err != nil {
		return t, importErr(err, path)
	}
	return t, nil
}

// templateFromRegistry pulls ref, falling back to the template pulled
// from it before when the registry fails.
func (m *Manager) templateFromRegistry(ctx context.Context, ref string) (template.Template, error) {
	t, err := template.Pull(ctx, m.Dirs.Cache, ref, template.PullOptions{ImportOptions: template.ImportOptions{
		Progress: m.progressOut(), InUse: m.TemplateInUse,
		Replace: func(old template.Template) error {
			if template.PulledFrom(old, ref) {
				return nil
			}
			return newErr(Conflict, "", nil, "remove it with `sbx template rm "+old.Name+"`, or load the image under another name",
				"template %s exists and came from elsewhere (%s)", old.Name, ShortDigests(old.Source))
		},
	}})
	if err == nil {
		return t, nil
	}
	re, ok := errors.AsType[*template.RegistryError](err)
	if !ok {
		return t, importErr(err, ref)
	}
	reason := registryReason(re)
	if cached, ok := template.FindPulled(m.Dirs.Cache, ref); ok {
		m.emit(Event{Kind: Warning, Text: fmt.Sprintf("cannot pull %s (%s); using template %s, pulled %s (%s)",
			ref, reason, cached.Name, cached.Created.Local().Format("2006-01-02 15:04"), ShortDigests(strings.TrimPrefix(cached.Source, "image ")))})
		return cached, nil
	}
	hint := "check the network and the proxy settings (HTTPS_PROXY); or load the image from a file: `docker save " + ref + " -o img.tar`, then `sbx template load img.tar`"
	switch re.Status {
	case 401, 403:
		hint = "log in to the registry with `docker login " + re.Registry + "` (sbx uses the same credentials)"
	case 404:
		hint = "check the repository and tag"
	}
	return t, newErr(Failed, "", err, hint, "cannot pull %s: %s", ref, reason)
}

// registryReason is a short reason for a registry failure.
func registryReason(re *template.RegistryError) string {
	switch re.Status {
	case 0:
	case 401, 403:
		return fmt.Sprintf("registry %s refused access (%d)", re.Registry, re.Status)
	case 404:
		return fmt.Sprintf("registry %s has no such image", re.Registry)
	default:
		return fmt.Sprintf("registry %s answered %d", re.Registry, re.Status)
	}
	msg := re.Err.Error()
	for _, s := range []string{"connection refused", "no such host", "i/o timeout", "network is unreachable", "connection reset", "EOF"} {
		if strings.Contains(msg, s) {
			msg = s
			break
		}
	}
	if len(msg) > 120 {
		msg = msg[:120] + "..."
	}
	return fmt.Sprintf("registry %s could not be reached: %s", re.Registry, msg)
}
