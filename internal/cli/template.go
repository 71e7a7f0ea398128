package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/template"
)

const templatesDoc = lifecycle.TemplatesDoc

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
			users, _ := e.manager().TemplateUsers()
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

// shortDigests shortens the sha256 digests in a template's source for
// the table.
func shortDigests(s string) string { return lifecycle.ShortDigests(s) }

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
				if err := e.manager().RemoveTemplate(name); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(e.stdout, name)
			}
			return joinUserErrs(errs)
		},
	}
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
			start := time.Now()
			t, err := e.manager().BuildTemplate(cmd.Context(), name)
			if err != nil {
				return err
			}
			if time.Since(start) < time.Second {
				fmt.Fprintf(e.stderr, "template %s is up to date (%s)\n", t.Name, shortID(t.ID))
			}
			fmt.Fprintln(e.stdout, t.Name)
			return nil
		},
	}
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
func checkNewName(name string) error { return lifecycle.CheckTemplateName(name) }

func (e *env) saveTemplate(ctx context.Context, sbName, name, out string) error {
	if err := checkNewName(name); err != nil {
		return err
	}
	sb, err := e.getSandbox(sbName)
	if err != nil {
		return err
	}
	t, err := e.manager().SaveTemplate(ctx, sb, name, out)
	if err != nil {
		return err
	}
	if out != "" {
		abs, _ := filepath.Abs(out)
		fmt.Fprintln(e.stdout, abs)
		return nil
	}
	fmt.Fprintf(e.stderr, "template %s saved from sandbox %s (%s); use it with `sbx run -t %s`\n", t.Name, sb.Config.Name, humanSize(allocated(t.Image)), t.Name)
	fmt.Fprintln(e.stdout, t.Name)
	return nil
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
			t, err := e.manager().LoadTemplate(cmd.Context(), args[0], name, force)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, t.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the new template (default: from the image's tag or the file name)")
	cmd.Flags().BoolVar(&force, "force", false, "replace a template of the same name that came from elsewhere")
	return cmd
}
