package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/template"
)

const templatesDoc = "docs/templates.md"

func newTemplateCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "template",
		Aliases: []string{"templates"},
		Short:   "Manage the root file system templates sandboxes boot from",
		Long: `A template is a read-only root file system image; each sandbox's disk is a
copy-on-write overlay of one. sbx builds two itself (shell, and agents with the
coding agents' CLIs and Docker Engine); others come from a container image
(` + "`sbx template load`" + `, or ` + "`sbx run -t REGISTRY/REPO:TAG`" + `) or from a sandbox's disk
(` + "`sbx template save`" + `). An image needs a user agent with uid 1000; see
` + templatesDoc + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newTemplateLsCmd(e), newTemplateRmCmd(e), newTemplateBuildCmd(e),
		newTemplateSaveCmd(e), newTemplateLoadCmd(e))
	return cmd
}

// templateEntry is one row of `sbx template ls --json`.
type templateEntry struct {
	Name      string            `json:"name"`
	ID        string            `json:"id"`
	SizeBytes int64             `json:"sizeBytes"`
	DiskBytes int64             `json:"diskBytes"`
	Created   time.Time         `json:"created"`
	Source    string            `json:"source"`
	Agents    []string          `json:"agents"`
	Versions  map[string]string `json:"versions"`
	Docker    bool              `json:"docker"`
	Packages  []string          `json:"packages"`
	Sandboxes []string          `json:"sandboxes"`
}

func newTemplateLsCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List templates",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			all, err := template.List(e.dirs.Cache)
			if err != nil {
				return userErr(err, "check that the cache folder is readable (`sbx diagnose`)", "cannot list templates")
			}
			users, _ := e.templateUsers()
			entries := []templateEntry{}
			for _, t := range all {
				en := templateEntry{
					Name: t.Name, ID: t.ID, SizeBytes: t.SizeBytes, DiskBytes: allocated(t.Image),
					Created: t.Created, Source: t.Source, Agents: t.Agents, Versions: t.Versions,
					Docker: t.Docker, Packages: t.Packages, Sandboxes: users[t.ID],
				}
				if en.Agents == nil {
					en.Agents = []string{}
				}
				if en.Versions == nil {
					en.Versions = map[string]string{}
				}
				if en.Packages == nil {
					en.Packages = []string{}
				}
				if en.Sandboxes == nil {
					en.Sandboxes = []string{}
				}
				entries = append(entries, en)
			}
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tSIZE\tCREATED\tSOURCE\tAGENTS")
			for _, en := range entries {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", en.Name, shortID(en.ID), humanSize(en.DiskBytes),
					en.Created.Local().Format("2006-01-02 15:04"), shortDigests(en.Source), agentsCell(en))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

var digestRe = regexp.MustCompile(`sha256:([0-9a-f]{12})[0-9a-f]{52}`)

// shortDigests shortens the sha256 digests in a template's source for
// the table.
func shortDigests(s string) string { return digestRe.ReplaceAllString(s, "sha256:$1") }

// agentsCell lists a template's agents with their versions, and Docker.
func agentsCell(en templateEntry) string {
	var parts []string
	for _, a := range en.Agents {
		if v := en.Versions[a]; v != "" {
			a += " " + v
		}
		parts = append(parts, a)
	}
	if en.Docker {
		parts = append(parts, "(docker)")
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// allocated returns the bytes a file takes on disk (images are sparse).
func allocated(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}

// templateUsers maps template image ids to the names of the sandboxes
// whose disks they back.
func (e *env) templateUsers() (map[string][]string, error) {
	sbs, err := e.store.List()
	out := map[string][]string{}
	for _, sb := range sbs {
		id := sb.Config.Template.ID
		out[id] = append(out[id], sb.Config.Name)
	}
	return out, err
}

// inUse reports whether a sandbox's disk is backed by image id; when the
// sandboxes cannot all be read it says yes, so nothing is deleted.
func (e *env) inUse(id string) bool {
	users, err := e.templateUsers()
	return err != nil || len(users[id]) > 0
}

func newTemplateRmCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:     "rm TEMPLATE...",
		Aliases: []string{"remove"},
		Short:   "Remove templates that no sandbox uses",
		Long: `Remove each TEMPLATE: its name and, unless another template shares it, its
image. A template whose image backs a sandbox's disk is refused; remove those
sandboxes first. A removed built-in template is built again on next use.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var errs []error
			for _, name := range args {
				if err := e.removeTemplate(name); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(e.stdout, name)
			}
			return joinUserErrs(errs)
		},
	}
}

func (e *env) removeTemplate(name string) error {
	users, listErr := e.templateUsers()
	var using []string
	err := template.Remove(e.dirs.Cache, name, func(id string) bool {
		using = users[id]
		return listErr != nil || len(using) > 0
	})
	switch {
	case err == nil:
		// The snapshots of a removed image go with it (those a sandbox
		// disk still uses stay until it is removed).
		if _, err := snapshot.Collect(e.dirs.Cache); err != nil {
			e.log.Debug("collect snapshots", "err", err)
		}
		return nil
	case errors.Is(err, template.ErrNotFound):
		return userErr(nil, "list templates with `sbx template ls`", "no template called %q", name)
	case errors.Is(err, template.ErrInUse) && len(using) > 0:
		return userErr(nil, fmt.Sprintf("remove them first: `sbx rm %s`", strings.Join(using, " ")),
			"template %s is used by sandbox %s", name, strings.Join(using, ", "))
	case errors.Is(err, template.ErrInUse):
		return userErr(listErr, "run with --debug to see which sandbox folders could not be read", "cannot tell whether template %s is in use; keeping it", name)
	}
	return userErr(err, "", "cannot remove template %s", name)
}

func newTemplateBuildCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "build [shell|agents]",
		Short: "Build a built-in template now (shell when none is named)",
		Long: `Build the built-in template shell (a minimal Debian with bash, git, curl, sudo)
or agents (shell plus Node.js, the coding agents' CLIs pinned by sbx, Docker
Engine and developer tools), which otherwise happens on first use. A template
that is up to date is left as it is. Needs root, debootstrap and mkfs.ext4
(and npm for agents).`,
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: []string{template.DefaultName, template.AgentsName},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := template.DefaultName
			if len(args) == 1 {
				name = args[0]
			}
			if !template.IsBuiltin(name) {
				return userErr(nil, fmt.Sprintf("the built-in templates are %s and %s; other templates come from `sbx template load` or `sbx template save`", template.DefaultName, template.AgentsName),
					"%q is not a built-in template", name)
			}
			start := time.Now()
			t, err := template.Ensure(cmd.Context(), e.dirs.Cache, name, e.stderr)
			if err != nil {
				return e.buildErr(err, name)
			}
			if time.Since(start) < time.Second {
				fmt.Fprintf(e.stderr, "template %s is up to date (%s)\n", t.Name, shortID(t.ID))
			}
			fmt.Fprintln(e.stdout, t.Name)
			return nil
		},
	}
}

func (e *env) buildErr(err error, name string) error {
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, template.ErrNeedRoot):
		return userErr(err, fmt.Sprintf("run `sudo sbx template build %s` once", name), "building template %s needs root", name)
	}
	return userErr(err, "see the message above; `sbx diagnose` checks the host", "cannot prepare template %s", name)
}

func newTemplateSaveCmd(e *env) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "save SANDBOX NAME [-o FILE]",
		Short: "Make a template of a stopped sandbox's disk",
		Long: `Make template NAME of the root disk of SANDBOX, which must be stopped: the
packages, files in /home/agent, /opt and elsewhere on its disk, as they are.
The workspace is not part of it (it lives on the host), nor is the Docker disk.
The disk is checked (e2fsck) and shrunk to its data plus headroom. The new
template remembers the agents and Docker Engine of the sandbox's template.

With -o FILE, the template is written to FILE instead (a tar holding a JSON
header and a compressed qcow2 image), for ` + "`sbx template load FILE`" + ` on this or
another machine.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.saveTemplate(cmd.Context(), args[0], args[1], out)
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the template to FILE instead of adding it to the templates")
	return cmd
}

// checkNewName rejects a template name that load or save may not give.
func checkNewName(name string) error {
	if template.IsBuiltin(name) {
		return userErr(nil, "choose another name", "%s is a built-in template name", name)
	}
	if template.NameFor(name) != name {
		return userErr(nil, fmt.Sprintf("use letters, digits, '.', '_' and '-', e.g. %s", template.NameFor(name)), "invalid template name %q", name)
	}
	return nil
}

func (e *env) saveTemplate(ctx context.Context, sbName, name, out string) error {
	if err := checkNewName(name); err != nil {
		return err
	}
	sb, err := e.getSandbox(sbName)
	if err != nil {
		return err
	}
	if out == "" {
		if _, err := template.Lookup(e.dirs.Cache, name); err == nil {
			return userErr(nil, fmt.Sprintf("remove it first with `sbx template rm %s`, or choose another name", name), "template %s exists", name)
		}
	} else if abs, err := filepath.Abs(out); err != nil {
		return userErr(err, "", "invalid output path %q", out)
	} else {
		out = abs
		if st, err := os.Stat(filepath.Dir(out)); err != nil || !st.IsDir() {
			return userErr(err, "create the folder first", "cannot write %s: no folder %s", out, filepath.Dir(out))
		}
	}
	// The sandbox lock keeps it from starting while its disk is read.
	unlock, err := e.lockSandbox(ctx, sb)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := e.store.Status(sb)
	if err != nil {
		return userErr(err, "", "cannot read the state of sandbox %s", sb.Config.Name)
	}
	switch st.Status {
	case sandbox.StatusStopped:
	case sandbox.StatusCrashed:
		fmt.Fprintf(e.stderr, "sbx: warning: sandbox %s crashed; its file system is checked and repaired before saving\n", sb.Config.Name)
	default:
		return userErr(nil, fmt.Sprintf("stop it first with `sbx stop %s`, then save again", sb.Config.Name),
			"sandbox %s is %s; only a stopped sandbox's disk can be saved", sb.Config.Name, st.Status)
	}
	opts := template.SaveOptions{
		Source:   fmt.Sprintf("sandbox %s (%s)", sb.Config.Name, sb.Config.Template.Name),
		From:     e.sandboxTemplate(sb),
		Progress: e.stderr,
		InUse:    e.inUse,
		Backing:  snapshot.Backing(e.dirs.Cache),
		Replace: func(template.Template) error {
			return userErr(nil, fmt.Sprintf("remove it first with `sbx template rm %s`, or choose another name", name), "template %s exists", name)
		},
	}
	disk := sb.Path(sandbox.DiskFile)
	if out != "" {
		if err := template.SaveFile(ctx, e.dirs.Cache, disk, name, out, opts); err != nil {
			return e.saveErr(err, sb)
		}
		fmt.Fprintln(e.stdout, out)
		return nil
	}
	t, err := template.Save(ctx, e.dirs.Cache, disk, name, opts)
	if err != nil {
		return e.saveErr(err, sb)
	}
	fmt.Fprintf(e.stderr, "template %s saved from sandbox %s (%s); use it with `sbx run -t %s`\n", t.Name, sb.Config.Name, humanSize(allocated(t.Image)), t.Name)
	fmt.Fprintln(e.stdout, t.Name)
	return nil
}

// sandboxTemplate returns the template sb's disk was made from: the one
// with its image id, else the one with its name, else just the name.
func (e *env) sandboxTemplate(sb *sandbox.Sandbox) template.Template {
	ref := sb.Config.Template
	all, _ := template.List(e.dirs.Cache)
	if i := slices.IndexFunc(all, func(t template.Template) bool { return t.ID == ref.ID }); i >= 0 {
		return all[i]
	}
	if t, err := template.Lookup(e.dirs.Cache, ref.Name); err == nil {
		return t
	}
	return template.Template{Name: ref.Name, ID: ref.ID}
}

func (e *env) saveErr(err error, sb *sandbox.Sandbox) error {
	if _, ok := errors.AsType[*UserError](err); ok || errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, fs.ErrNotExist) {
		return userErr(err, fmt.Sprintf("the sandbox's disk is gone; remove it with `sbx rm %s`", sb.Config.Name), "cannot read the disk of sandbox %s", sb.Config.Name)
	}
	return userErr(err, "run with --debug for the cause", "cannot save sandbox %s", sb.Config.Name)
}

func newTemplateLoadCmd(e *env) *cobra.Command {
	var name string
	var force bool
	cmd := &cobra.Command{
		Use:   "load FILE [--name NAME] [--force]",
		Short: "Make a template of an image file or a saved template",
		Long: `Make a template of FILE: a ` + "`docker save`" + ` tarball (plain or gzip), an OCI image
layout folder, an OCI archive (a tar of a layout), or a file from
` + "`sbx template save -o`" + `. The image's layers are flattened into an ext4 image; its
entrypoint, command and environment are not used (sandboxes run their agent).
The image needs a user agent with uid 1000 in /etc/passwd and its group in
/etc/group, and bash for ` + "`sbx run shell`" + `; see ` + templatesDoc + `.

The name is NAME, else the image's tag or the file's name made into a template
name. A template of the same name loaded from the same FILE is replaced; one
that came from anywhere else (another file, a registry, ` + "`sbx template save`" + `) is
replaced only with --force. Sandboxes made from a replaced template keep their
disks. Loading an image needs root (its files keep their owners).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if name != "" {
				if err := checkNewName(name); err != nil {
					return err
				}
			}
			abs, err := filepath.Abs(args[0])
			if err != nil {
				return userErr(err, "", "invalid path %q", args[0])
			}
			t, err := template.LoadFile(cmd.Context(), e.dirs.Cache, abs, template.ImportOptions{
				Name: name, Progress: e.stderr, InUse: e.inUse,
				Replace: loadReplace(args[0], abs, force),
			})
			if err != nil {
				return e.importErr(err, args[0])
			}
			fmt.Fprintln(e.stdout, t.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the new template (default: from the image's tag or the file name)")
	cmd.Flags().BoolVar(&force, "force", false, "replace a template of the same name that came from elsewhere")
	return cmd
}

// loadReplace says whether `template load` of the file at abs (given as
// path) may replace template old: when old was loaded from the same path,
// or with --force.
func loadReplace(path, abs string, force bool) func(old template.Template) error {
	return func(old template.Template) error {
		if force || strings.HasPrefix(old.Source, "file "+abs+"@") {
			return nil
		}
		return userErr(nil, fmt.Sprintf("load it under another name with `sbx template load %s --name NEW`, or replace %s with --force", path, old.Name),
			"template %s exists and came from elsewhere (%s)", old.Name, shortDigests(old.Source))
	}
}

// importErr turns an error of loading or pulling an image into a message
// for people.
func (e *env) importErr(err error, what string) error {
	if _, ok := errors.AsType[*UserError](err); ok || errors.Is(err, context.Canceled) {
		return err
	}
	if mu, ok := errors.AsType[*template.MissingUserError](err); ok {
		return userErr(err, "an image needs a user "+mu.User+" with uid 1000 and its group (add them in its Dockerfile, e.g. `RUN useradd -m -u 1000 agent`); see "+templatesDoc,
			"image %s is missing user %s: %s", what, mu.User, mu.Reason)
	}
	switch {
	case errors.Is(err, template.ErrNeedRoot):
		return userErr(err, "run it with sudo", "loading image %s needs root: its files keep their owners", what)
	case errors.Is(err, template.ErrUnknownFormat):
		return userErr(err, "give a `docker save` tarball, an OCI image layout folder or archive, or a file from `sbx template save -o`",
			"%s is not an image file sbx reads", what)
	case errors.Is(err, template.ErrBuiltinName):
		return userErr(err, "choose another name with --name", "an image cannot take a built-in template's name")
	case errors.Is(err, template.ErrNoSpace):
		return userErr(err, "free space on the cache's file system (`sbx template rm` unused templates), or check that the image is what you expect: sbx writes at most 64 GiB for one image and always leaves 2 GiB free",
			"not enough disk space to load image %s", what)
	case errors.Is(err, template.ErrUnsafeEntry):
		return userErr(err, "the image is malformed or hostile; rebuild it", "refusing image %s: an entry points outside its root file system", what)
	case errors.Is(err, fs.ErrNotExist):
		return userErr(err, "check the path", "no file or folder %s", what)
	}
	return userErr(err, "run with --debug for the cause", "cannot load image %s", what)
}

// resolveTemplate returns the template a new sandbox for agent boots from.
// ref may be empty (the agent's built-in template, built on first use), a
// template name (built-in names are built on first use), a path to an
// image file or folder (loaded once; a later use of the same content
// reuses the template) or a registry reference (pulled; when the registry
// cannot be reached, a template pulled from the same reference before is
// used with a warning).
func (e *env) resolveTemplate(ctx context.Context, ref string, agent agentSpec) (template.Template, error) {
	name := ref
	if name == "" {
		name = agent.Template
	}
	if template.IsBuiltin(name) {
		t, err := template.Ensure(ctx, e.dirs.Cache, name, e.stderr)
		if err != nil {
			return t, e.buildErr(err, name)
		}
		return t, nil
	}
	t, err := template.Lookup(e.dirs.Cache, name)
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, template.ErrNotFound) && !strings.ContainsAny(name, "/\\") {
		return t, userErr(err, fmt.Sprintf("remove it with `sbx template rm %s`", name), "cannot read template %s", name)
	}
	if _, serr := os.Stat(ref); serr == nil || strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, ".") {
		return e.templateFromFile(ctx, ref)
	}
	if template.IsImageRef(ref) {
		return e.templateFromRegistry(ctx, ref)
	}
	return t, userErr(nil, "list templates with `sbx template ls`; load an image file with `sbx template load FILE`, or give a registry reference as REGISTRY/REPO:TAG",
		"no template called %q", name)
}

// templateFromFile loads the image file at path as a template, or reuses
// the template loaded from the same path and content before.
func (e *env) templateFromFile(ctx context.Context, path string) (template.Template, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return template.Template{}, userErr(err, "", "invalid path %q", path)
	}
	if src, err := template.FileSource(e.dirs.Cache, abs); err == nil {
		all, _ := template.List(e.dirs.Cache)
		if i := slices.IndexFunc(all, func(t template.Template) bool { return t.Source == src }); i >= 0 {
			return all[i], nil
		}
	}
	t, err := template.LoadFile(ctx, e.dirs.Cache, abs, template.ImportOptions{
		Progress: e.stderr, InUse: e.inUse,
		Replace: func(old template.Template) error {
			if strings.HasPrefix(old.Source, "file "+abs+"@") {
				return nil
			}
			return userErr(nil, fmt.Sprintf("load the file under another name with `sbx template load %s --name NEW`, then use -t NEW", path),
				"template %s exists and came from elsewhere (%s)", old.Name, shortDigests(old.Source))
		},
	})
	if err != nil {
		return t, e.importErr(err, path)
	}
	return t, nil
}

// templateFromRegistry pulls ref, falling back to the template pulled
// from it before when the registry fails.
func (e *env) templateFromRegistry(ctx context.Context, ref string) (template.Template, error) {
	t, err := template.Pull(ctx, e.dirs.Cache, ref, template.PullOptions{ImportOptions: template.ImportOptions{
		Progress: e.stderr, InUse: e.inUse,
		Replace: func(old template.Template) error {
			if template.PulledFrom(old, ref) {
				return nil
			}
			return userErr(nil, "remove it with `sbx template rm "+old.Name+"`, or load the image under another name",
				"template %s exists and came from elsewhere (%s)", old.Name, shortDigests(old.Source))
		},
	}})
	if err == nil {
		return t, nil
	}
	re, ok := errors.AsType[*template.RegistryError](err)
	if !ok {
		return t, e.importErr(err, ref)
	}
	reason := registryReason(re)
	if cached, ok := template.FindPulled(e.dirs.Cache, ref); ok {
		fmt.Fprintf(e.stderr, "sbx: warning: cannot pull %s (%s); using template %s, pulled %s (%s)\n",
			ref, reason, cached.Name, cached.Created.Local().Format("2006-01-02 15:04"), shortDigests(strings.TrimPrefix(cached.Source, "image ")))
		return cached, nil
	}
	hint := "check the network and the proxy settings (HTTPS_PROXY); or load the image from a file: `docker save " + ref + " -o img.tar`, then `sbx template load img.tar`"
	switch re.Status {
	case 401, 403:
		hint = "log in to the registry with `docker login " + re.Registry + "` (sbx uses the same credentials)"
	case 404:
		hint = "check the repository and tag"
	}
	return t, userErr(err, hint, "cannot pull %s: %s", ref, reason)
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
