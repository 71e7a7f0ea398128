package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sbx-dev/sbx/internal/clone"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/wsdiff"
)

// maxGuestOutput caps what sbx diff reads of a guest command's output;
// guestTimeout bounds the guest's part of it.
const (
	maxGuestOutput = 64 << 20
	guestTimeout   = 5 * time.Minute
)

// cappedBuffer is a buffer that fails writes past its cap. The buffer is
// a field: embedded, its ReadFrom would let io.Copy go around Write.
type cappedBuffer struct {
	buf bytes.Buffer
	cap int
}

var errOutputCap = errors.New("output too large")

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if c.buf.Len()+len(p) > c.cap {
		return 0, errOutputCap
	}
	return c.buf.Write(p)
}

func (c *cappedBuffer) Bytes() []byte { return c.buf.Bytes() }
func (c *cappedBuffer) Reset()        { c.buf.Reset() }

// cloneDiff is `sbx diff` of a clone mode sandbox: its branches' commits
// (fetched and compared by the host's git, clone.FetchBranches) and what
// it left uncommitted (its git status in the guest), risky paths flagged
// by the same table as a live workspace.
func (e *env) cloneDiff(ctx context.Context, sb *sandbox.Sandbox, asJSON, patch bool) error {
	name := sb.Config.Name
	repo := sb.Config.Workspaces[0].Path
	if err := e.ensureRunning(ctx, sb, startInBackground); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return userErr(err, "", "cannot find the sbx binary for git's remote helper")
	}
	fetched, err := clone.FetchBranches(ctx, repo, name, exe)
	if err != nil {
		return userErr(err, "see `sbx logs "+name+"`; `sbx exec "+name+" git -C "+repo+" log` shows the clone's history",
			"sandbox %s: cannot fetch the clone's branches", name)
	}
	defer fetched.Close()

	// The guest answers the rest: it may never finish.
	ctx, cancel := context.WithTimeout(ctx, guestTimeout)
	defer cancel()
	out := &cappedBuffer{cap: maxGuestOutput}
	var errb strings.Builder
	code, err := e.guestRun(ctx, sb, "agent", []string{"sh", "-c", clone.StatusScript, "sh", repo}, nil, out, &errb)
	if err != nil {
		return err
	}
	if code != 0 {
		return userErr(nil, "see `sbx exec "+name+" git -C "+repo+" status`", "sandbox %s: git status in the clone failed (exit %d): %s", name, code, terminalField(strings.TrimSpace(errb.String())))
	}
	st, err := clone.ParseStatus(out.Bytes())
	if err != nil {
		return userErr(err, "", "sandbox %s: cannot read the clone's status", name)
	}
	if paths, stdin := clone.StatPaths(st); len(paths) > 0 {
		out.Reset()
		code, err := e.guestRun(ctx, sb, "agent", []string{"bash", "-c", clone.StatScript, "bash", repo}, bytes.NewReader(stdin), out, io.Discard)
		if err != nil {
			return err
		}
		if code != 0 {
			return userErr(nil, "", "sandbox %s: cannot read the modes of the clone's untracked files (exit %d)", name, code)
		}
		if err := clone.ApplyStat(&st, paths, out.Bytes()); err != nil {
			return userErr(err, "", "sandbox %s: cannot read the modes of the clone's untracked files", name)
		}
	}

	var changes []wsdiff.Change
	add := func(e wsdiff.GitEntry, state, ref string) {
		if c, ok := wsdiff.FromGit(repo, e); ok {
			c.State, c.Ref = state, ref
			changes = append(changes, c)
		}
	}
	for _, b := range fetched.Branches {
		for _, e := range b.Entries {
			add(e, "committed", b.Name)
		}
	}
	for _, e := range st.Changed {
		add(e, "uncommitted", st.Branch)
	}
	for _, e := range st.Untracked {
		add(e, "untracked", st.Branch)
	}
	order := map[string]int{"committed": 0, "uncommitted": 1, "untracked": 2}
	slices.SortStableFunc(changes, func(a, b wsdiff.Change) int {
		if a.Risky != b.Risky {
			if a.Risky {
				return -1
			}
			return 1
		}
		if d := order[a.State] - order[b.State]; d != 0 {
			return d
		}
		return strings.Compare(a.Ref+"\x00"+a.Path, b.Ref+"\x00"+b.Path)
	})

	switch {
	case patch:
		return e.clonePatch(ctx, sb, fetched, st)
	case asJSON:
		return e.changesJSON(changes)
	}
	if len(changes) == 0 {
		fmt.Fprintf(e.stderr, "no changes in the clone of sandbox %s: no branch has commits its host branch lacks, nothing uncommitted\n", name)
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RISK\tSTATE\tCHANGE\tKIND\tPATH\tDETAIL")
	for _, c := range changes {
		risk := ""
		if c.Risky {
			risk = "!"
		}
		state := c.State
		if c.Ref != "" && c.State == "committed" {
			state += " (" + terminalField(c.Ref) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", risk, state, c.Change, c.Kind, wsdiff.QuotePath(c.Path), detail(c))
	}
	return tw.Flush()
}

// clonePatch prints each branch's diff from its fork point (the host's
// git), then the clone's uncommitted diff against HEAD (the guest's git)
// and its untracked files.
func (e *env) clonePatch(ctx context.Context, sb *sandbox.Sandbox, fetched *clone.Fetched, st clone.Status) error {
	w, flush := e.patchWriter()
	defer flush()
	for _, b := range fetched.Branches {
		fmt.Fprintf(w, "# committed on branch %s (%s..%s, by the host's git)\n", terminalField(b.Name), short(b.Base), short(b.Tip))
		text, err := fetched.Patch(ctx, b)
		if err != nil {
			return userErr(err, "", "sandbox %s: cannot diff branch %s", sb.Config.Name, terminalField(b.Name))
		}
		io.WriteString(w, text)
	}
	if len(st.Changed) == 0 && len(st.Untracked) == 0 {
		return nil
	}
	repo := sb.Config.Workspaces[0].Path
	fmt.Fprintf(w, "# uncommitted on %s (the clone's work tree against HEAD, by the guest's git)\n", orDetached(st.Branch))
	if len(st.Changed) > 0 && st.Head != "" {
		out := &cappedBuffer{cap: maxGuestOutput}
		code, err := e.guestRun(ctx, sb, "agent", []string{"git", "-C", repo, "-c", "core.fsmonitor=false", "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "HEAD"}, nil, out, io.Discard)
		if err != nil {
			return err
		}
		if code != 0 {
			return userErr(nil, "", "sandbox %s: git diff in the clone failed (exit %d)", sb.Config.Name, code)
		}
		w.Write(out.Bytes())
	}
	for _, u := range st.Untracked {
		fmt.Fprintf(w, "untracked %s: %s\n", kindOfMode(u.NewMode), wsdiff.QuotePath(u.Path))
	}
	return nil
}

// patchWriter is where a patch goes: stdout, made safe for a terminal
// when it is one (the guest wrote the text); a file or pipe gets the
// bytes as they are.
func (e *env) patchWriter() (io.Writer, func()) {
	if f, ok := e.stdout.(*os.File); ok {
		if _, tty := terminalFd(f); tty {
			tw := &terminalWriter{w: e.stdout}
			return tw, func() { tw.Flush() }
		}
	}
	return e.stdout, func() {}
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func orDetached(branch string) string {
	if branch == "" {
		return "a detached HEAD"
	}
	return "branch " + terminalField(branch)
}

func kindOfMode(m uint32) string {
	switch m &^ 0o7777 {
	case wsdiff.GitSymlink:
		return "symlink"
	case wsdiff.GitDir:
		return "dir"
	case 0o100000:
		return "file"
	}
	return "special"
}
