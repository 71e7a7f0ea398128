package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// startMode says how a command wants a sandbox's VM kept
// (lifecycle.StartMode).
type startMode = lifecycle.StartMode

const (
	// startForSession (an attached `sbx run`): a VM it starts stops when its
	// last session ends.
	startForSession = lifecycle.ForSession
	// startInBackground (exec, cp, create): a VM it starts keeps running
	// until `sbx stop`; a running VM keeps its mode.
	startInBackground = lifecycle.InBackground
	// startDetached (`run -d`): like startInBackground, and a running VM
	// becomes detached too.
	startDetached = lifecycle.Detached
)

// ensureRunning starts sb unless its VM runs, as mode says. A crashed
// sandbox is recovered by a fresh start.
func (e *env) ensureRunning(ctx context.Context, sb *sandbox.Sandbox, mode startMode) error {
	if err := e.ensureStarted(ctx, sb, mode); err != nil {
		return err
	}
	// A clone mode sandbox's clone is made on its first run.
	return e.manager().EnsureClone(ctx, sb)
}

// startNew starts sb, which this command has just made; when that fails
// sb is removed again, as the API does, so a failed create leaves no
// crashed sandbox behind (its error says why it did not start).
func (e *env) startNew(ctx context.Context, sb *sandbox.Sandbox, mode startMode) error {
	err := e.ensureRunning(ctx, sb, mode)
	if err == nil {
		return nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if rerr := e.removeSandbox(rctx, sb, true); rerr != nil {
		return errors.Join(err, rerr)
	}
	return errors.Join(err, userErr(nil, "", "sandbox %s did not start, so it was removed again", sb.Config.Name))
}

// ensureStarted is the lifecycle's start with the CLI's steps: the
// workspace check, the `sbx diff` baseline (read while the start is
// prepared, finished before the VM boots: nothing in the guest, not even
// a container Docker restarts at boot, can write before it), the default
// policy (asked on a terminal), the boot assets.
func (e *env) ensureStarted(ctx context.Context, sb *sandbox.Sandbox, mode startMode) error {
	return e.manager().Start(ctx, sb, lifecycle.StartRequest{
		Mode:     mode,
		Baseline: e.startSnapshot,
		Policy:   e.ensurePolicyDefault,
		Cold:     e.cold,
	})
}

// manager is the lifecycle of e's store, its events rendered on stderr.
func (e *env) manager() *lifecycle.Manager {
	if e.mgr == nil {
		e.mgr = &lifecycle.Manager{Dirs: e.dirs, Store: e.store, Log: e.log, Events: e.renderEvent, Secrets: e.secretStore, Progress: e.stderr}
	}
	return e.mgr
}

// renderEvent prints a lifecycle event: notices and warnings always,
// phases and details with --debug.
func (e *env) renderEvent(ev lifecycle.Event) {
	switch ev.Kind {
	case lifecycle.Notice:
		fmt.Fprintf(e.stderr, "sbx: %s\n", terminalField(ev.Text))
	case lifecycle.Warning:
		fmt.Fprintf(e.stderr, "sbx: warning: %s\n", terminalField(ev.Text))
	case lifecycle.Phase:
		if e.debug {
			fmt.Fprintf(e.stderr, "boot: %-18s %6d ms\n", ev.Phase, ev.Duration.Milliseconds())
		}
	case lifecycle.Detail:
		if e.debug {
			fmt.Fprintf(e.stderr, "boot: %s\n", terminalField(ev.Text))
		}
	}
}

// lockSandbox takes sb's lock (lifecycle.Manager.Lock).
func (e *env) lockSandbox(ctx context.Context, sb *sandbox.Sandbox) (func(), error) {
	return e.manager().Lock(ctx, sb)
}

// releaseLeases drops the leases of a sandbox of cfg's disk
// (lifecycle.Manager.ReleaseLeases).
func (e *env) releaseLeases(cfg sandbox.Config) { e.manager().ReleaseLeases(cfg) }
