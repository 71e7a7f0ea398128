package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/clone"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// guestRun runs argv in sb's guest as user (lifecycle.Manager.GuestRun).
func (e *env) guestRun(ctx context.Context, sb *sandbox.Sandbox, user string, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return e.manager().GuestRun(ctx, sb, user, argv, stdin, stdout, stderr)
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
			if err := e.manager().EnsureClone(ctx, sb); err != nil {
				return err
			}
			// New host commits go in as a new bundle (the clone's sbx-host).
			if sb.Config.Workspaces[0].Unshared {
				if err := e.manager().SendBundle(ctx, sb); err != nil {
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
				if err := e.manager().EnsureClone(ctx, sb); err != nil {
					return err
				}
				argv := []string{"git", "-c", "safe.directory=*", "upload-pack", "--strict", filepath.Join(sb.Config.Workspaces[0].Path, ".git")}
				if v := os.Getenv("GIT_PROTOCOL"); v != "" {
					argv = append([]string{"env", "GIT_PROTOCOL=" + v}, argv...)
				}
				// What the guest's git says reaches the terminal escaped:
				// its stderr, and the messages in its output that the host's
				// git prints (sideband progress and errors, ERR packets).
				tw := &terminalWriter{w: e.stderr}
				defer tw.Flush()
				pr, pw := io.Pipe()
				filtered := make(chan error, 1)
				go func() {
					err := clone.FilterPackets(stdout, pr, escapeProgress)
					pr.CloseWithError(err)
					filtered <- err
				}()
				code, err := e.guestRun(ctx, sb, "agent", argv, stdin, pw, tw)
				pw.Close()
				if ferr := <-filtered; err == nil && ferr != nil {
					return ferr
				}
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

// escapeProgress escapes a git progress message for the terminal, keeping
// the \r git redraws its progress lines with.
func escapeProgress(b []byte) []byte {
	var out []byte
	for i, part := range bytes.Split(b, []byte("\r")) {
		if i > 0 {
			out = append(out, '\r')
		}
		out = appendTerminalSafe(out, part)
	}
	return out
}
