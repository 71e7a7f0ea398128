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

// newSuperviseSnapshotCmd is the hidden re-exec that boots and saves one
// template's snapshot VM (supervisor.SaveSnapshot starts it).
func newSuperviseSnapshotCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:    "supervise-snapshot",
		Short:  "Save a template's snapshot (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			ctx, stop := signal.NotifyContext(context.WithoutCancel(cmd.Context()), syscall.SIGTERM, syscall.SIGHUP, os.Interrupt)
			defer stop()
			return supervisor.RunSnapshot(ctx, cmd.InOrStdin(), log)
		},
	}
}
