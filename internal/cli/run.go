package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/agents"
)

func newRunCmd(e *env) *cobra.Command {
	var f createFlags
	var quiet bool
	cmd := &cobra.Command{
		Use:   "run [flags] [AGENT|SANDBOX] [PATH...] [-- AGENT_ARGS...]",
		Short: "Run an agent in a sandbox, creating and starting it as needed",
		Long: `Run AGENT (default: shell, which is ` + "`bash -l`" + ` as user agent) in a sandbox on
the workspace PATH (default: the current folder; more paths are extra
workspaces, PATH:ro read-only), attached to the terminal.

Agents: shell, claude, codex, gemini, copilot, opencode. Coding agents start
in their unattended mode (claude --dangerously-skip-permissions, codex
--dangerously-bypass-approvals-and-sandbox, gemini --yolo, copilot --yolo,
opencode): the sandbox is the safety boundary. They share the "agents"
template (Node.js, the pinned agent CLIs, git, python3, Docker Engine),
built on first use; their provider key comes from ` + "`sbx secret`" + ` through
the proxy, and their domains become rules of the sandbox (` + "`sbx policy ls`" + `).

The sandbox is created if it does not exist and started if it is stopped;
running again for the same workspace (or --name) opens a new session in the
same sandbox. A new sandbox resumes its template's pre-booted snapshot
(saved once per template and VM size, on first use) instead of booting a
kernel; its later starts boot cold. --cold boots a new sandbox cold too. The first argument is a known agent, else an existing
sandbox, else a path. After "--", arguments that start with "-" are added to
the agent's default arguments; others replace them:
  sbx run shell . -- -c 'make test'     runs bash -l -c 'make test'

Without a terminal on stdin, the streams are plain pipes and sbx exits with
the agent's exit code. The VM stops when its last session ends, unless it
was started with -d. When the session ends, a summary of what changed in
the workspace since the sandbox started goes to stderr, risky changes first
(-q hides it; ` + "`sbx diff`" + ` shows it all).`,
		Example: `  sbx run                      # a shell in a sandbox on the current folder
  sbx run claude ~/proj        # Claude Code on ~/proj
  sbx run -t mytemplate codex  # Codex in a template saved or loaded earlier
  sbx run shell ~/proj ~/docs:ro
  sbx run -d --name build .    # boot in the background, print the name
  sbx run shell . -- -c 'go test ./...'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var extra []string
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				args, extra = args[:n], args[n:]
			}
			// Refusals before anything is made (the twelfth review: -d
			// --rm created and booted the sandbox, then refused).
			if err := f.check(cmd); err != nil {
				return err
			}
			if f.rm && f.detached {
				return userErr(nil, "use one or the other", "--rm and -d do not go together: a detached sandbox has no session to end")
			}
			if f.detached && len(extra) > 0 {
				return userErr(nil, "start it with `sbx run -d NAME`, then `sbx exec NAME ...` the command; or drop -d", "-d starts the sandbox without a session, so the agent arguments after -- (%s) would not be used", strings.Join(extra, " "))
			}
			env, err := parseEnv(f.env)
			if err != nil {
				return err
			}
			t, err := e.resolveTarget(args)
			if err != nil {
				return err
			}
			nf, err := f.parseNet()
			if err != nil {
				return err
			}
			e.cold = f.cold
			sb, created, err := e.findOrCreate(cmd, &f, t, nf)
			if err != nil {
				return err
			}
			if !created {
				if err := e.applyNet(cmd, sb, nf); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			if f.rm {
				if !created {
					return userErr(nil, "drop --rm, or remove it later with `sbx rm "+sb.Config.Name+"`", "--rm removes only a sandbox this command creates, and %s already exists", sb.Config.Name)
				}
				// Removal runs on every way out, even after Ctrl-C.
				defer func() {
					rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
					defer cancel()
					if rerr := e.removeSandbox(rctx, sb, true); rerr != nil {
						Render(e.stderr, rerr, e.debug)
					}
				}()
			}
			mode := startForSession
			if f.detached {
				mode = startDetached
			}
			start := e.ensureRunning
			if created && !f.rm { // --rm removes it on every way out
				start = e.startNew
			}
			if err := start(ctx, sb, mode); err != nil {
				return err
			}
			if f.detached {
				fmt.Fprintln(e.stdout, sb.Config.Name)
				return nil
			}
			_, isTerm := terminalFd(e.stdin)
			code, err := e.attach(ctx, sb, session{
				argv:  agents.LoginArgv(t.agent, agents.Argv(t.agent, extra)),
				env:   env,
				dir:   sb.PrimaryWorkspace(),
				user:  "agent",
				tty:   isTerm,
				stdin: true,
			}, mode)
			if !quiet {
				e.printChangeSummary(e.stderr, sb)
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVarP(&f.detached, "detached", "d", false, "boot the VM in the background without starting the agent; print the name")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "do not print the summary of workspace changes when the session ends")
	cmd.Flags().BoolVar(&f.rm, "rm", false, "remove the sandbox when the agent exits (only a sandbox this command creates)")
	return cmd
}
