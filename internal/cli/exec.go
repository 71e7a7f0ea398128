package cli

import (
	"errors"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newExecCmd(e *env) *cobra.Command {
	var (
		interactive, tty, detach bool
		envs                     []string
		dir, user                string
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] SANDBOX COMMAND [ARG...]",
		Short: "Run a command in a sandbox",
		Long: `Run COMMAND in SANDBOX, like docker exec. A stopped sandbox is started first
(and keeps running until ` + "`sbx stop`" + `). The command runs as user agent in the
primary workspace unless -u or -w say otherwise, and its exit code becomes
sbx's. -t gives it a real terminal that follows window-size changes; -i
connects stdin.`,
		Example: `  sbx exec shell-proj make test
  sbx exec -it shell-proj bash
  sbx exec -u root shell-proj apt-get install -y jq
  sbx exec shell-proj -- ls -la   # a "--" before COMMAND is dropped`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// `sbx exec NAME -- CMD` (kubectl's way) means CMD.
			if args[1] == "--" {
				args = append(args[:1], args[2:]...)
				if len(args) < 2 {
					return userErr(nil, "for example: sbx exec NAME -- ls", "no command after --")
				}
			}
			sb, err := e.getSandbox(args[0])
			if err != nil {
				return err
			}
			env, err := parseEnv(envs)
			if err != nil {
				return err
			}
			if dir == "" {
				dir = sb.PrimaryWorkspace()
			} else if !strings.HasPrefix(dir, "/") {
				return userErr(nil, "give an absolute path inside the sandbox", "-w %q is not an absolute path", dir)
			}
			if tty {
				if _, ok := terminalFd(e.stdin); !ok {
					return userErr(nil, "drop -t when stdin is not a terminal", "-t needs a terminal on stdin")
				}
			}
			ctx := cmd.Context()
			if err := e.ensureRunning(ctx, sb, startInBackground); err != nil {
				return err
			}
			s := session{argv: args[1:], env: env, dir: dir, user: user, tty: tty, stdin: interactive}
			if detach {
				s.argv = []string{"sh", "-c", `setsid -f "$@" </dev/null >/dev/null 2>&1`, "sh"}
				s.argv = append(s.argv, args[1:]...)
				s.tty, s.stdin = false, false
			}
			code, err := e.attach(ctx, sb, s, startInBackground)
			if err != nil {
				return err
			}
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "keep stdin open and send it to the command")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "give the command a terminal")
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run the command in the background and return at once")
	cmd.Flags().StringArrayVarP(&envs, "env", "e", nil, "set KEY=VALUE (or pass KEY from this environment); repeatable")
	cmd.Flags().StringVarP(&dir, "workdir", "w", "", "working folder inside the sandbox (default: the primary workspace)")
	cmd.Flags().StringVarP(&user, "user", "u", "agent", "user name or uid to run as")
	return cmd
}

// parseEnv validates -e values: KEY=VALUE, or KEY to pass this process's
// value.
func parseEnv(in []string) ([]string, error) {
	var out []string
	for _, kv := range in {
		k, _, hasValue := strings.Cut(kv, "=")
		if k == "" || strings.ContainsAny(k, " \t\n") {
			return nil, userErr(nil, "use -e KEY=VALUE", "bad environment variable %q", kv)
		}
		if !hasValue {
			v, ok := os.LookupEnv(k)
			if !ok {
				continue
			}
			kv = k + "=" + v
		}
		out = append(out, kv)
	}
	return out, nil
}

// getSandbox finds a sandbox by name or id with a helpful error.
func (e *env) getSandbox(name string) (*sandbox.Sandbox, error) {
	sb, err := e.store.Get(name)
	if err != nil {
		hint := "list sandboxes with `sbx ls`"
		if errors.Is(err, sandbox.ErrConfigVersion) || !strings.HasSuffix(err.Error(), name) {
			hint = "some sandbox folders could not be read: `sbx ls` names them, and `sbx rm -f ID` removes one by its folder's id"
		}
		return nil, userErr(err, hint, "no sandbox named %q", name)
	}
	return sb, nil
}
