package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

const stopTimeout = 90 * time.Second

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
				if err := e.stopSandbox(cmd.Context(), sb); err != nil {
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

// stopSandbox shuts sb down if it runs and waits for its supervisor to exit.
// A crashed sandbox is marked stopped.
func (e *env) stopSandbox(ctx context.Context, sb *sandbox.Sandbox) error {
	unlock, err := e.lockSandbox(sb)
	if err != nil {
		return err
	}
	defer unlock()
	return e.stopLocked(ctx, sb)
}

// stopLocked is stopSandbox for a caller that holds the sandbox lock.
func (e *env) stopLocked(ctx context.Context, sb *sandbox.Sandbox) error {
	st, err := e.store.Status(sb)
	if err != nil {
		return err
	}
	switch st.Status {
	case sandbox.StatusStopped:
		return nil
	case sandbox.StatusCrashed:
		return e.store.SetState(sb, sandbox.State{Status: sandbox.StatusStopped})
	}
	ctx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	if err := supervisor.Client(e.store, sb).Stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
		e.log.Debug("stop request", "sandbox", sb.Config.Name, "err", err)
	}
	if err := supervisor.WaitGone(ctx, st.PID, sb.Config.ID); err != nil {
		return userErr(err, "see `sbx logs "+sb.Config.Name+"`", "sandbox %s did not stop within %s", sb.Config.Name, stopTimeout)
	}
	return nil
}

// joinUserErrs joins per-sandbox errors; Render prints each on its own.
func joinUserErrs(errs []error) error { return errors.Join(errs...) }
