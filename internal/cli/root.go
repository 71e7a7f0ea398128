// Package cli implements the sbx command line: one file per command, table
// or --json output, and the single place where errors become text for
// people (Render).
package cli

import (
	"context"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/hostcheck"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// Version is the sbx version, set at build time with -ldflags.
var Version = "dev"

// env is what every command needs: folders, the sandbox store and the
// output streams.
type env struct {
	dirs   paths.Dirs
	store  *sandbox.Store
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	debug  bool
	log    *slog.Logger
	// cold is run's and create's --cold: no snapshot start.
	cold bool
	// mgr is the lifecycle of store (manager()).
	mgr *lifecycle.Manager
}

// Streams are the process's standard streams, passed in so tests can
// capture output.
type Streams struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// NewRoot builds the sbx command tree.
func NewRoot(ctx context.Context, s Streams) (*cobra.Command, *bool) {
	e := &env{stdin: s.In, stdout: s.Out, stderr: s.Err}
	root := &cobra.Command{
		Use:   "sbx",
		Short: "Run AI coding agents in microVM sandboxes",
		Long: `sbx runs AI coding agents (or a plain shell) inside a microVM per sandbox.
The agent gets full control of its own machine (root via sudo, its own disk);
only the workspace folder (read-write, at the same path) and the network
traffic the policy allows (see ` + "`sbx policy`" + `) cross between it and the host.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if paths.Getenv("SBX_DEBUG") == "1" {
				e.debug = true
			}
			dirs, err := paths.Resolve()
			if err != nil {
				return userErr(err, "set SBX_HOME to a folder sbx may write", "cannot find where to keep sandbox state")
			}
			e.dirs = dirs
			e.store = sandbox.NewStore(dirs)
			hostcheck.SetCacheDir(dirs.Cache)
			level := slog.LevelWarn
			if e.debug {
				level = slog.LevelDebug
			}
			e.log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
			return nil
		},
	}
	root.SetContext(ctx)
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	root.PersistentFlags().BoolVar(&e.debug, "debug", false, "show error causes and boot phase timings")
	root.AddCommand(
		newRunCmd(e),
		newCreateCmd(e),
		newExecCmd(e),
		newLsCmd(e),
		newStopCmd(e),
		newRmCmd(e),
		newPruneCmd(e),
		newCpCmd(e),
		newDiffCmd(e),
		newLogsCmd(e),
		newDiagnoseCmd(e),
		newVersionCmd(e),
		newSuperviseCmd(e),
		newSuperviseSnapshotCmd(e),
		newPolicyCmd(e),
		newPortsCmd(e),
		newSecretCmd(e),
		newTemplateCmd(e),
		newFetchIntoCmd(e),
		newGitRemoteCmd(e),
		newDaemonCmd(e),
	)
	root.InitDefaultCompletionCmd()
	return root, &e.debug
}
