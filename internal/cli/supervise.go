package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/supervisor"
)

// newSuperviseCmd is the hidden re-exec that runs one sandbox's supervisor.
func newSuperviseCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:    "supervise ID",
		Short:  "Run a sandbox's supervisor (internal)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := e.store.Get(args[0])
			if err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			sup, err := supervisor.New(e.store, sb, log, supervisor.Options{Secrets: e.secretStore()})
			if err != nil {
				log.Error("supervisor", "err", err)
				return err
			}
			// A terminal's SIGINT never reaches us (own session); SIGTERM
			// and SIGHUP mean a clean shutdown.
			ctx, stop := signal.NotifyContext(context.WithoutCancel(cmd.Context()), syscall.SIGTERM, syscall.SIGHUP, os.Interrupt)
			defer stop()
			return sup.Run(ctx)
		},
	}
}
