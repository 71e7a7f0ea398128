package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/clone"
	"github.com/sbx-dev/sbx/internal/safefile"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// ClonedFile, in a clone mode sandbox's folder, records that its clone
// was made.
const ClonedFile = "cloned"

// CloneWorkspace checks that repo can be a clone mode sandbox's
// repository and returns its one workspace (the repository, recorded but
// not shared) and setup; untracked also copies its untracked files (not
// the ignored ones). A folder that cannot be cloned is Invalid on
// "workspace", with what to do.
func (m *Manager) CloneWorkspace(ctx context.Context, repo string, untracked bool) (sandbox.Workspace, *sandbox.Clone, error) {
	src, err := clone.Check(ctx, repo)
	if err != nil {
		hint := "run sbx without --clone to work on the folder itself"
		switch {
		case errors.Is(err, clone.ErrNotTop):
			hint = "give the top folder of the work tree (`git rev-parse --show-toplevel`)"
		case errors.Is(err, clone.ErrBare):
			hint = "clone it into a work tree first (`git clone BARE DIR`), and give DIR"
		case errors.Is(err, clone.ErrWorktree):
			hint = "give the main work tree of the repository (`git worktree list`)"
		case errors.Is(err, clone.ErrDirtyIndex):
			hint = "commit or unstage (`git restore --staged .`) what is staged: the clone gets commits only"
		case errors.Is(err, clone.ErrNoCommit):
			hint = "make a first commit: the clone gets commits only"
		}
		e := invalid(nil, hint, "cannot use --clone: %v", err)
		e.Field = "workspace"
		return sandbox.Workspace{}, nil, e
	}
	c := &sandbox.Clone{Untracked: untracked}
	for _, r := range src.Remotes {
		c.Remotes = append(c.Remotes, sandbox.Remote{Name: r.Name, URL: r.URL})
	}
	// Recorded, not shared: the guest gets the repository's commits as a
	// bundle (SendBundle), never its work tree or .git.
	return sandbox.Workspace{Path: src.Root, ReadOnly: true, Unshared: true}, c, nil
}

// GuestRun runs argv in running sb's guest as user, in /, and returns
// its exit code; output goes to stdout and stderr.
func (m *Manager) GuestRun(ctx context.Context, sb *sandbox.Sandbox, user string, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	st, err := m.Exec(ctx, sb, ExecRequest{ExecRequest: agentapi.ExecRequest{Argv: argv, User: user, Dir: "/"}},
		agentclient.ExecIO{Stdin: stdin, Stdout: stdout, Stderr: stderr})
	return st.Code, err
}

// guestScript runs script as user; a failure is Failed with what, and
// the script's output.
func (m *Manager) guestScript(ctx context.Context, sb *sandbox.Sandbox, user, script, hint, what string) error {
	var out strings.Builder
	code, err := m.GuestRun(ctx, sb, user, []string{"sh", "-c", script}, nil, &out, &out)
	if err != nil || code != 0 {
		return newErr(Failed, sb.Config.Name, err, hint, "sandbox %s: %s: %s", sb.Config.Name, what, strings.TrimSpace(out.String()))
	}
	return nil
}

// EnsureClone makes a clone mode sandbox's clone on its first run (the
// VM is running): the repository's path made in the guest for the agent
// user, the clone from a bundle, the untracked files if asked, the forge
// remotes; then the host repository gets the remote sandbox-NAME. Other
// sandboxes, and later runs, do nothing.
func (m *Manager) EnsureClone(ctx context.Context, sb *sandbox.Sandbox) error {
	c := sb.Config.Clone
	if c == nil {
		return nil
	}
	if _, err := os.Stat(sb.Path(ClonedFile)); err == nil {
		return nil
	}
	unlock, err := safefile.Lock(ctx, sb.Path(ClonedFile+".lock"))
	if err != nil {
		return newErr(Internal, sb.Config.Name, err, "", "sandbox %s: cannot lock its clone setup", sb.Config.Name)
	}
	defer unlock()
	if _, err := os.Stat(sb.Path(ClonedFile)); err == nil {
		return nil
	}
	dest := sb.Config.Workspaces[0].Path
	m.emit(Event{Kind: Notice, Sandbox: sb.Config.Name, Text: fmt.Sprintf("cloning %s into sandbox %s", dest, sb.Config.Name)})
	logs := "see `sbx logs " + sb.Config.Name + "`"
	if err := m.guestScript(ctx, sb, "root", clone.PrepareScript(dest, "agent"), logs, "cannot make "+dest+" in the guest"); err != nil {
		return err
	}
	if err := m.SendBundle(ctx, sb); err != nil {
		return err
	}
	if c.Untracked {
		tmp, err := os.MkdirTemp("", "sbx-clone-")
		if err != nil {
			return newErr(Internal, sb.Config.Name, err, "", "cannot make a temporary folder")
		}
		defer os.RemoveAll(tmp)
		staged := filepath.Join(tmp, "untracked")
		if _, err := clone.Untracked(ctx, dest, staged); err != nil {
			return newErr(Failed, sb.Config.Name, err, "", "sandbox %s: cannot gather the untracked files of %s", sb.Config.Name, dest)
		}
		if err := m.copyIntoGuest(ctx, sb, staged, clone.GuestInbox); err != nil {
			return err
		}
	}
	src := clone.Source{Root: dest}
	for _, r := range c.Remotes {
		src.Remotes = append(src.Remotes, clone.Remote{Name: r.Name, URL: r.URL})
	}
	if err := m.guestScript(ctx, sb, "agent", clone.Script(dest, src), "see the message above; `sbx rm "+sb.Config.Name+"` and create it again", "the clone failed"); err != nil {
		return err
	}
	if c.Untracked {
		if err := m.guestScript(ctx, sb, "root", clone.UntrackedScript(dest, "agent"), "", "cannot put the untracked files into the clone"); err != nil {
			return err
		}
	}
	if err := clone.AddHostRemote(ctx, dest, sb.Config.Name); err != nil {
		m.emit(Event{Kind: Warning, Sandbox: sb.Config.Name, Text: fmt.Sprintf("the host repository did not get the remote %s: %v", clone.HostRemote(sb.Config.Name), err)})
	}
	return sandbox.WriteFileAtomic(sb.Path(ClonedFile), nil, 0o600)
}

// SendBundle copies a bundle of the host repository's HEAD, branches and
// tags (made by the host's git in a temporary folder) into the guest's
// inbox, readable by the agent user: the clone's remote sbx-host.
func (m *Manager) SendBundle(ctx context.Context, sb *sandbox.Sandbox) error {
	tmp, err := os.MkdirTemp("", "sbx-clone-")
	if err != nil {
		return newErr(Internal, sb.Config.Name, err, "", "cannot make a temporary folder")
	}
	defer os.RemoveAll(tmp)
	repo := sb.Config.Workspaces[0].Path
	bundle := filepath.Join(tmp, filepath.Base(clone.GuestBundle))
	if err := clone.Bundle(ctx, repo, bundle); err != nil {
		return newErr(Failed, sb.Config.Name, err, "check the repository with `git status`", "sandbox %s: cannot bundle %s", sb.Config.Name, repo)
	}
	if err := m.guestScript(ctx, sb, "root", clone.InboxScript(), "see `sbx logs "+sb.Config.Name+"`", "cannot make "+clone.GuestInbox+" in the guest"); err != nil {
		return err
	}
	if err := m.copyIntoGuest(ctx, sb, bundle, clone.GuestInbox); err != nil {
		return err
	}
	return m.guestScript(ctx, sb, "root", clone.ReadableScript(), "", "cannot open "+clone.GuestInbox+" to the agent user")
}

// copyIntoGuest copies sbx's own host path src (a temporary folder, no
// links to resolve) into the guest folder dst.
func (m *Manager) copyIntoGuest(ctx context.Context, sb *sandbox.Sandbox, src, dst string) error {
	stream, err := m.stream(ctx, sb, false)
	if err != nil {
		return err
	}
	if err := agentclient.CopyIn(ctx, stream, src, dst); err != nil {
		return newErr(Failed, sb.Config.Name, err, "see `sbx logs "+sb.Config.Name+"`", "sandbox %s: cannot copy %s into the guest", sb.Config.Name, filepath.Base(src))
	}
	return nil
}
