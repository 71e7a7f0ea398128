package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/clone"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/safefile"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// ClonedFile, in a clone mode sandbox's folder, records that its clone
// was made.
const ClonedFile = "cloned"

// cloneWorkspaces turns a clone mode target into its one workspace (the
// host repository, recorded but not shared) and setup.
func (e *env) cloneWorkspaces(ctx context.Context, f *createFlags, t target) ([]sandbox.Workspace, *sandbox.Clone, error) {
	if len(t.workspaces) != 1 || t.workspaces[0].ReadOnly {
		return nil, nil, userErr(nil, "give one repository folder", "--clone takes exactly one writable workspace, the repository (got %s)", describeWorkspaces(t.workspaces))
	}
	if len(f.protect) > 0 || f.protectDefaults {
		return nil, nil, userErr(nil, "leave --protect out: in clone mode the host repository is read-only to the sandbox", "--clone with --protect")
	}
	src, err := clone.Check(ctx, t.workspaces[0].Path)
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
		return nil, nil, userErr(nil, hint, "cannot use --clone: %v", err)
	}
	c := &sandbox.Clone{Untracked: f.cloneUntracked}
	for _, r := range src.Remotes {
		c.Remotes = append(c.Remotes, sandbox.Remote{Name: r.Name, URL: r.URL})
	}
	// Recorded, not shared: the guest gets the repository's commits as a
	// bundle (sendBundle), never its work tree or .git.
	return []sandbox.Workspace{{Path: src.Root, ReadOnly: true, Unshared: true}}, c, nil
}

// guestRun runs argv in sb's guest as user and returns its exit code;
// output goes to stdout and stderr.
func (e *env) guestRun(ctx context.Context, sb *sandbox.Sandbox, user string, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	st, err := e.manager().Exec(ctx, sb, lifecycle.ExecRequest{ExecRequest: agentapi.ExecRequest{Argv: argv, User: user, Dir: "/"}},
		agentclient.ExecIO{Stdin: stdin, Stdout: stdout, Stderr: stderr})
	return st.Code, err
}

// ensureClone makes a clone mode sandbox's clone on its first run (the VM
// is running): the repository's path made in the guest for the agent
// user, the clone, the forge remotes; then the host repository gets the
// remote sandbox-NAME.
func (e *env) ensureClone(ctx context.Context, sb *sandbox.Sandbox) error {
	c := sb.Config.Clone
	if c == nil {
		return nil
	}
	if _, err := os.Stat(sb.Path(ClonedFile)); err == nil {
		return nil
	}
	unlock, err := safefile.Lock(ctx, sb.Path(ClonedFile+".lock"))
	if err != nil {
		return userErr(err, "", "sandbox %s: cannot lock its clone setup", sb.Config.Name)
	}
	defer unlock()
	if _, err := os.Stat(sb.Path(ClonedFile)); err == nil {
		return nil
	}
	dest := sb.Config.Workspaces[0].Path
	fmt.Fprintf(e.stderr, "sbx: cloning %s into sandbox %s\n", dest, sb.Config.Name)
	var out strings.Builder
	if code, err := e.guestRun(ctx, sb, "root", []string{"sh", "-c", clone.PrepareScript(dest, "agent")}, nil, &out, &out); err != nil || code != 0 {
		return userErr(err, "see `sbx logs "+sb.Config.Name+"`", "sandbox %s: cannot make %s in the guest: %s", sb.Config.Name, dest, strings.TrimSpace(out.String()))
	}
	if err := e.sendBundle(ctx, sb); err != nil {
		return err
	}
	if c.Untracked {
		tmp, err := os.MkdirTemp("", "sbx-clone-")
		if err != nil {
			return userErr(err, "", "cannot make a temporary folder")
		}
		defer os.RemoveAll(tmp)
		staged := filepath.Join(tmp, "untracked")
		if _, err := clone.Untracked(ctx, dest, staged); err != nil {
			return userErr(err, "", "sandbox %s: cannot gather the untracked files of %s", sb.Config.Name, dest)
		}
		if err := e.copyIntoGuest(ctx, sb, staged, clone.GuestInbox); err != nil {
			return err
		}
	}
	src := clone.Source{Root: dest}
	for _, r := range c.Remotes {
		src.Remotes = append(src.Remotes, clone.Remote{Name: r.Name, URL: r.URL})
	}
	out.Reset()
	if code, err := e.guestRun(ctx, sb, "agent", []string{"sh", "-c", clone.Script(dest, src)}, nil, &out, &out); err != nil || code != 0 {
		return userErr(err, "see the message above; `sbx rm "+sb.Config.Name+"` and create it again",
			"sandbox %s: the clone failed: %s", sb.Config.Name, terminalField(strings.TrimSpace(out.String())))
	}
	if c.Untracked {
		out.Reset()
		if code, err := e.guestRun(ctx, sb, "root", []string{"sh", "-c", clone.UntrackedScript(dest, "agent")}, nil, &out, &out); err != nil || code != 0 {
			return userErr(err, "", "sandbox %s: cannot put the untracked files into the clone: %s", sb.Config.Name, terminalField(strings.TrimSpace(out.String())))
		}
	}
	if err := clone.AddHostRemote(ctx, dest, sb.Config.Name); err != nil {
		fmt.Fprintf(e.stderr, "sbx: warning: the host repository did not get the remote %s: %v\n", clone.HostRemote(sb.Config.Name), err)
	}
	return sandbox.WriteFileAtomic(sb.Path(ClonedFile), nil, 0o600)
}

// sendBundle copies a bundle of the host repository's HEAD, branches and
// tags (made by the host's git in a temporary folder) into the guest's
// inbox, readable by the agent user: the clone's remote sbx-host.
func (e *env) sendBundle(ctx context.Context, sb *sandbox.Sandbox) error {
	tmp, err := os.MkdirTemp("", "sbx-clone-")
	if err != nil {
		return userErr(err, "", "cannot make a temporary folder")
	}
	defer os.RemoveAll(tmp)
	repo := sb.Config.Workspaces[0].Path
	bundle := filepath.Join(tmp, filepath.Base(clone.GuestBundle))
	if err := clone.Bundle(ctx, repo, bundle); err != nil {
		return userErr(err, "check the repository with `git status`", "sandbox %s: cannot bundle %s", sb.Config.Name, repo)
	}
	var out strings.Builder
	if code, err := e.guestRun(ctx, sb, "root", []string{"sh", "-c", clone.InboxScript()}, nil, &out, &out); err != nil || code != 0 {
		return userErr(err, "see `sbx logs "+sb.Config.Name+"`", "sandbox %s: cannot make %s in the guest: %s", sb.Config.Name, clone.GuestInbox, terminalField(strings.TrimSpace(out.String())))
	}
	if err := e.copyIntoGuest(ctx, sb, bundle, clone.GuestInbox); err != nil {
		return err
	}
	if code, err := e.guestRun(ctx, sb, "root", []string{"sh", "-c", clone.ReadableScript()}, nil, &out, &out); err != nil || code != 0 {
		return userErr(err, "", "sandbox %s: cannot open %s to the agent user", sb.Config.Name, clone.GuestInbox)
	}
	return nil
}

// copyIntoGuest copies the host path src into the guest folder dst.
func (e *env) copyIntoGuest(ctx context.Context, sb *sandbox.Sandbox, src, dst string) error {
	stream, err := supervisor.Client(e.store, sb).OpenStream(ctx, false)
	if err != nil {
		return userErr(err, "check it with `sbx ls`", "cannot reach sandbox %s", sb.Config.Name)
	}
	defer stream.Close()
	if err := agentclient.CopyIn(ctx, stream, src, dst); err != nil {
		return userErr(err, "see `sbx logs "+sb.Config.Name+"`", "sandbox %s: cannot copy %s into the guest", sb.Config.Name, filepath.Base(src))
	}
	return nil
}

// newFetchIntoCmd is `sbx fetch-into NAME [REF]`.
func newFetchIntoCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "fetch-into SANDBOX [REF]",
		Short: "Bring new commits of the host repository into a clone mode sandbox",
		Long: `Fetch the host repository's branches (or REF) into the clone of a
sandbox made with --clone, as the remote "` + clone.SourceRemote + `" there
(refs/remotes/` + clone.SourceRemote + `/*): the agent merges or rebases them as it
likes. The other way, git fetch sandbox-NAME in the host repository brings
the agent's branches home into refs/sandboxes/NAME/*.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := e.store.Get(args[0])
			if err != nil {
				return userErr(nil, "list sandboxes with `sbx ls`", "no sandbox named %q", args[0])
			}
			if sb.Config.Clone == nil {
				return userErr(nil, "it shares the host folder itself: host commits are there already", "sandbox %s is not in clone mode", sb.Config.Name)
			}
			ref := ""
			if len(args) == 2 {
				ref = args[1]
				if strings.HasPrefix(ref, "-") {
					return userErr(nil, "give a branch, tag or refspec", "REF %q looks like an option", ref)
				}
			}
			ctx := cmd.Context()
			if err := e.ensureRunning(ctx, sb, startInBackground); err != nil {
				return err
			}
			if err := e.ensureClone(ctx, sb); err != nil {
				return err
			}
			// New host commits go in as a new bundle (the clone's sbx-host).
			if sb.Config.Workspaces[0].Unshared {
				if err := e.sendBundle(ctx, sb); err != nil {
					return err
				}
			}
			out, errw := &terminalWriter{w: e.stdout}, &terminalWriter{w: e.stderr}
			defer out.Flush()
			defer errw.Flush()
			code, err := e.guestRun(ctx, sb, "agent", []string{"sh", "-c", clone.FetchScript(sb.Config.Workspaces[0].Path, ref)}, nil, out, errw)
			if err != nil {
				return err
			}
			if code != 0 {
				return &UserError{Msg: fmt.Sprintf("git fetch in sandbox %s failed (exit %d)", sb.Config.Name, code), Code: code}
			}
			return nil
		},
	}
}

// newGitRemoteCmd is the remote helper git runs as git-remote-sbx
// (cmd/sbx maps that name here): `git fetch sandbox-NAME` with the URL
// sbx::NAME connects to git upload-pack in the sandbox's clone.
func newGitRemoteCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:    "git-remote REMOTE SANDBOX",
		Short:  "git remote helper for sbx::SANDBOX (run by git as git-remote-sbx)",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := e.store.Get(args[1])
			if err != nil {
				return userErr(nil, "the sandbox was removed; its fetched branches stay in refs/sandboxes/", "no sandbox named %q", args[1])
			}
			if sb.Config.Clone == nil {
				return userErr(nil, "", "sandbox %s is not in clone mode", sb.Config.Name)
			}
			ctx := cmd.Context()
			return clone.ServeHelper(e.stdin, e.stdout, func(service string, stdin io.Reader, stdout io.Writer) error {
				if err := e.ensureRunning(ctx, sb, startInBackground); err != nil {
					return err
				}
				if err := e.ensureClone(ctx, sb); err != nil {
					return err
				}
				argv := []string{"git", "-c", "safe.directory=*", "upload-pack", "--strict", filepath.Join(sb.Config.Workspaces[0].Path, ".git")}
				if v := os.Getenv("GIT_PROTOCOL"); v != "" {
					argv = append([]string{"env", "GIT_PROTOCOL=" + v}, argv...)
				}
				// What the guest's git says reaches the terminal escaped.
				tw := &terminalWriter{w: e.stderr}
				defer tw.Flush()
				code, err := e.guestRun(ctx, sb, "agent", argv, stdin, stdout, tw)
				if err != nil {
					return err
				}
				if code != 0 {
					return fmt.Errorf("git upload-pack in sandbox %s exited %d", sb.Config.Name, code)
				}
				return nil
			})
		},
	}
}
