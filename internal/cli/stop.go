package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newStopCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stop SANDBOX...",
		Short: "Shut sandboxes down cleanly, keeping their disks",
		Long: `Stop each SANDBOX: the guest syncs its disks and powers off; the VM is killed
only if it does not finish within 30 seconds. The disk is kept, so the next
` + "`sbx run`" + ` continues where it left off.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			for _, name := range args {
				sb, err := e.getSandbox(name)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if err := e.manager().Stop(cmd.Context(), sb); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(e.stdout, sb.Config.Name)
			}
			return joinUserErrs(errs)
		},
	}
	return cmd
}

// stopLocked stops sb for a caller that holds its lock.
func (e *env) stopLocked(ctx context.Context, sb *sandbox.Sandbox) error {
	return e.manager().StopLocked(ctx, sb)
}

// joinUserErrs joins per-sandbox errors; Render prints each on its own.
func joinUserErrs(errs []error) error { return errors.Join(errs...) }
