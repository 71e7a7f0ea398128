package lifecycle

import (
	"context"
	"log/slog"

	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/vm"
)

// InProcess is a LaunchFunc that runs each supervisor in this process,
// its VMs made by backend (the fake vm/vmtest backend in tests): the same
// supervisor, control API and state as `sbx supervise`, without a process
// of its own. A supervisor outlives the call that started it, as a
// process would; it ends when its VM does.
func InProcess(backend vm.Backend, log *slog.Logger) LaunchFunc {
	return func(ctx context.Context, store *sandbox.Store, sb *sandbox.Sandbox, boot supervisor.Boot, progress func(controlapi.Status)) error {
		if err := supervisor.WriteBoot(store, sb, boot); err != nil {
			return err
		}
		sup, err := supervisor.New(store, sb, log, supervisor.Options{Backend: backend})
		if err != nil {
			return err
		}
		done := sandbox.RunsInProcess(sb.Config.ID)
		exited := make(chan error, 1)
		runCtx, cancel := context.WithCancel(context.Background())
		go func() {
			err := sup.Run(runCtx)
			done()
			cancel()
			exited <- err
		}()
		if err := supervisor.WaitUp(ctx, store, sb, exited, progress); err != nil {
			cancel()
			return err
		}
		return nil
	}
}
