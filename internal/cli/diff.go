package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/wsdiff"
)

// wsdiffDir is the sandbox's folder of workspace snapshots
// (docs/state-layout.md).
const wsdiffDir = "wsdiff"

// summaryLines caps the change summary printed when a run session ends.
const summaryLines = 20

func newDiffCmd(e *env) *cobra.Command {
	var asJSON, sinceCreate, patch, unreviewed bool
	cmd := &cobra.Command{
		Use:   "diff [SANDBOX]",
		Short: "Show what changed in a sandbox's workspaces since it started",
		Long: `Show what changed in the sandbox's workspaces since its VM last started
(or, with --since-create, since its first start): files added, modified and
deleted, mode changes, new symlinks and new hard links to files outside the
workspace. Changes to paths the host runs implicitly (git hooks and config,
CI files, Makefiles, package.json, IDE and agent settings, shell startup
files, files newly made executable) are flagged risky with the reason, and
listed first; docs/workspace-trust.md has the table. .git/objects and
folders the workspace's .gitignore ignores are summarised per folder.

SANDBOX defaults to the sandbox whose primary workspace is the current
folder. --patch prints a unified diff of text files: against the copy
kept at the start for flagged files (git hooks included, which git never
shows), else against the commit HEAD named at the start for tracked files.
No git program runs on the workspace (its hooks and filters are the
agent's). Paths and link targets are quoted when they hold control
characters or invalid UTF-8. Folders the walk cannot read are listed as
unreadable, risky.

In clone mode (--clone) the work is in the sandbox's own clone: sbx diff
starts the sandbox if needed and lists, per branch, what the agent
committed (fetched through the sandbox's channel into a throwaway
repository and compared by the host's git with the host branch of the
same name, else the host's HEAD; nothing is written to your repository),
then what it left uncommitted or untracked in the clone (as git status in
the guest reports it). Risky paths are flagged by the same table. On a
terminal, --patch shows guest-written text with control characters
escaped.`,
		Example: `  sbx diff                     # the sandbox of the current folder
  sbx diff myproj --json | jq '.[] | select(.risky)'
  sbx diff --patch`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := e.diffSandbox(args)
			if err != nil {
				return err
			}
			if sb.Config.Clone != nil {
				if sinceCreate || unreviewed {
					return userErr(nil, "use `sbx diff "+sb.Config.Name+"` (with --json or --patch): a clone is compared with the host branches it forked from",
						"sandbox %s is in clone mode: --since-create and --unreviewed compare workspace snapshots, which clone mode does not take", sb.Config.Name)
				}
				return e.cloneDiff(cmd.Context(), sb, asJSON, patch)
			}
			which, since := wsdiff.StartFile, "started"
			if sinceCreate {
				which, since = wsdiff.CreateFile, "was created"
			}
			dir := sb.Path(wsdiffDir)
			if unreviewed {
				if sinceCreate || patch {
					return userErr(nil, "use --unreviewed alone or with --json", "--unreviewed compares two kept snapshots: no --since-create or --patch")
				}
				which, since = wsdiff.PrevFile, "was last reviewed"
			}
			base, err := wsdiff.Load(filepath.Join(dir, which))
			if errors.Is(err, fs.ErrNotExist) {
				return userErr(nil, "start it with `sbx run "+sb.Config.Name+"`; changes are recorded from its next start", "sandbox %s has no workspace snapshot yet", sb.Config.Name)
			}
			if err != nil {
				return userErr(err, "it is rewritten at the sandbox's next start", "cannot read the workspace snapshot of sandbox %s", sb.Config.Name)
			}
			var changes []wsdiff.Change
			if unreviewed {
				changes, err = wsdiff.Unreviewed(dir)
				if err != nil {
					return userErr(err, "", "cannot read the snapshots of sandbox %s", sb.Config.Name)
				}
			} else if _, changes, err = wsdiff.Since(base); err != nil {
				return userErr(err, "", "cannot read the workspace of sandbox %s", sb.Config.Name)
			}
			switch {
			case patch:
				w, flush := e.patchWriter()
				defer flush()
				return wsdiff.Patch(w, base, filepath.Join(dir, wsdiff.FilesDir), changes)
			case asJSON:
				return e.changesJSON(changes)
			}
			if len(changes) == 0 {
				if unreviewed {
					fmt.Fprintf(e.stderr, "no changes between the last review of sandbox %s (%s) and its last start\n", sb.Config.Name, base.Taken.Local().Format(time.DateTime))
					return nil
				}
				fmt.Fprintf(e.stderr, "no changes since sandbox %s %s (%s)\n", sb.Config.Name, since, base.Taken.Local().Format(time.DateTime))
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RISK\tCHANGE\tKIND\tPATH\tDETAIL")
			for _, c := range changes {
				risk := ""
				if c.Risky {
					risk = "!"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", risk, c.Change, c.Kind, displayPath(sb, c), detail(c))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: an array of changes (path, change, kind, risky, reason, ...)")
	cmd.Flags().BoolVar(&sinceCreate, "since-create", false, "compare with the snapshot of the sandbox's first start")
	cmd.Flags().BoolVar(&patch, "patch", false, "print a unified diff of changed text files")
	cmd.Flags().BoolVar(&unreviewed, "unreviewed", false, "list what changed after the last printed summary and before the last start (absorbed into its baseline)")
	return cmd
}

// changesJSON prints changes as `sbx diff --json` does: an array, empty
// when nothing changed.
func (e *env) changesJSON(changes []wsdiff.Change) error {
	if changes == nil {
		changes = []wsdiff.Change{}
	}
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(changes)
}

// diffSandbox is the named sandbox, else the one whose primary workspace
// is the current folder.
func (e *env) diffSandbox(args []string) (*sandbox.Sandbox, error) {
	if len(args) == 1 {
		return e.getSandbox(args[0])
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, userErr(err, "", "cannot read the current folder")
	}
	if real, err := filepath.EvalSymlinks(wd); err == nil {
		wd = real
	}
	all, _ := e.store.List()
	var found []*sandbox.Sandbox
	var names []string
	for _, s := range all {
		if s.PrimaryWorkspace() == wd {
			found = append(found, s)
			names = append(names, s.Config.Name)
		}
	}
	switch len(found) {
	case 0:
		return nil, userErr(nil, "name one: `sbx diff SANDBOX` (see `sbx ls`)", "no sandbox has %s as its workspace", wd)
	case 1:
		return found[0], nil
	}
	return nil, userErr(nil, "name one: `sbx diff SANDBOX`", "several sandboxes have %s as their workspace: %s", wd, strings.Join(names, ", "))
}

// displayPath is the path relative to the primary workspace, absolute for
// other workspaces, quoted when it holds control characters or invalid
// UTF-8 (wsdiff.QuotePath): the guest chose it.
func displayPath(sb *sandbox.Sandbox, c wsdiff.Change) string {
	if c.Workspace == sb.PrimaryWorkspace() {
		return wsdiff.QuotePath(c.Path)
	}
	return wsdiff.QuotePath(filepath.Join(c.Workspace, filepath.FromSlash(c.Path)))
}

// detail is the human note on a change: the risk reason, a link target,
// a mode change, a summarised folder's counts.
func detail(c wsdiff.Change) string {
	var parts []string
	if c.Target != "" {
		t := "-> " + wsdiff.QuotePath(c.Target)
		if c.Outside {
			t += " (outside the workspace)"
		}
		parts = append(parts, t)
	}
	if c.OldMode != "" && c.OldMode != c.Mode {
		parts = append(parts, c.OldMode+" -> "+c.Mode)
	}
	if c.Kind == "summary" {
		s := c.Summary + " folder, summarised"
		switch c.Change {
		case wsdiff.Modified:
			s += fmt.Sprintf(": %d files (was %d)", c.Files, c.OldFiles)
		case wsdiff.Added:
			s += fmt.Sprintf(": %d files", c.Files)
		case wsdiff.Deleted:
			s += fmt.Sprintf(": had %d files", c.OldFiles)
		}
		parts = append(parts, s)
	}
	if c.Risky {
		parts = append(parts, c.Reason)
	}
	return strings.Join(parts, "; ")
}

// printChangeSummary writes to w the changes since sb's VM started, risky
// first, at most summaryLines of them; nothing when nothing changed or no
// snapshot was taken.
func (e *env) printChangeSummary(w io.Writer, sb *sandbox.Sandbox) {
	base, err := wsdiff.Load(filepath.Join(sb.Path(wsdiffDir), wsdiff.StartFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			e.log.Debug("workspace summary", "err", err)
		}
		return
	}
	now, changes, err := wsdiff.Since(base)
	if err != nil {
		fmt.Fprintf(w, "sbx: cannot list workspace changes: %v\n", err)
		return
	}
	// What this summary shows is reviewed: the next start tells about
	// anything changed after it (wsdiff.Unreviewed).
	defer func() {
		if err := wsdiff.MarkReviewed(sb.Path(wsdiffDir), now); err != nil {
			e.log.Debug("workspace summary", "err", err)
		}
	}()
	if len(changes) == 0 {
		return
	}
	risky := 0
	for _, c := range changes {
		if c.Risky {
			risky++
		}
	}
	fmt.Fprintf(w, "sbx: %d %s in the workspace since sandbox %s started", len(changes), plural(len(changes), "change", "changes"), sb.Config.Name)
	if risky > 0 {
		fmt.Fprintf(w, ", %d risky", risky)
	}
	fmt.Fprintln(w, ":")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i, c := range changes {
		if i == summaryLines {
			break
		}
		mark := " "
		if c.Risky {
			mark = "!"
		}
		line := fmt.Sprintf("  %s %s\t%s", mark, c.Change, displayPath(sb, c))
		if d := detail(c); d != "" {
			line += "\t" + d
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	if n := len(changes) - summaryLines; n > 0 {
		fmt.Fprintf(w, "  ... %d more; see `sbx diff %s`\n", n, sb.Config.Name)
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// startSnapshot snapshots sb's writable workspaces in the background (the
// baseline `sbx diff` and the run summary compare with). The returned func
// waits for it; call it before the VM can run anything. A failed snapshot
// only warns: the sandbox starts, and diff says it has no baseline.
func (e *env) startSnapshot(sb *sandbox.Sandbox) func() {
	var roots []string
	for _, w := range sb.Config.Workspaces {
		if !w.ReadOnly {
			roots = append(roots, w.Path)
		}
	}
	done := make(chan struct{})
	begin := time.Now()
	var err error
	var took time.Duration
	var unreviewed []wsdiff.Change
	go func() {
		defer close(done)
		_, err = wsdiff.Record(sb.Path(wsdiffDir), roots)
		took = time.Since(begin)
		if err == nil {
			unreviewed, _ = wsdiff.Unreviewed(sb.Path(wsdiffDir))
		}
	}()
	return sync.OnceFunc(func() {
		waitFrom := time.Now()
		<-done
		if err != nil {
			fmt.Fprintf(e.stderr, "sbx: warning: cannot snapshot the workspace (%v); `sbx diff` will not show this session's changes\n", err)
		}
		e.warnUnreviewed(sb, unreviewed)
		if e.debug {
			fmt.Fprintf(e.stderr, "boot: %-18s %6d ms (start waited %d ms)\n", "snapshot", took.Milliseconds(), time.Since(waitFrom).Milliseconds())
		}
	})
}

// warnUnreviewed tells, at a start, about risky changes made after the
// last printed summary (by a guest job while the VM idled, in a session
// whose summary was not printed, or on the host) that the new baseline
// now includes: they are never absorbed silently.
func (e *env) warnUnreviewed(sb *sandbox.Sandbox, changes []wsdiff.Change) {
	risky := 0
	for _, c := range changes {
		if c.Risky {
			risky++
		}
	}
	if risky == 0 {
		return
	}
	fmt.Fprintf(e.stderr, "sbx: warning: %d risky %s in the workspace of sandbox %s since its last summary, before this start (%d in all):\n",
		risky, plural(risky, "change", "changes"), sb.Config.Name, len(changes))
	tw := tabwriter.NewWriter(e.stderr, 0, 4, 2, ' ', 0)
	n := 0
	for _, c := range changes {
		if !c.Risky {
			continue
		}
		if n == summaryLines {
			break
		}
		n++
		fmt.Fprintf(tw, "  ! %s\t%s\t%s\n", c.Change, displayPath(sb, c), detail(c))
	}
	tw.Flush()
	fmt.Fprintf(e.stderr, "  see `sbx diff %s --unreviewed`\n", sb.Config.Name)
}
