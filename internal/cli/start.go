package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// startMode says how a command wants a sandbox's VM kept.
type startMode int

const (
	// startForSession (an attached `sbx run`): a VM it starts stops when its
	// last session ends.
	startForSession startMode = iota
	// startInBackground (exec, cp, create): a VM it starts keeps running
	// until `sbx stop`; a running VM keeps its mode.
	startInBackground
	// startDetached (`run -d`): like startInBackground, and a running VM
	// becomes detached too.
	startDetached
)

// ensureRunning starts sb unless its VM runs, as mode says. A crashed
// sandbox is recovered by a fresh start.
func (e *env) ensureRunning(ctx context.Context, sb *sandbox.Sandbox, mode startMode) error {
	if err := e.ensureStarted(ctx, sb, mode); err != nil {
		return err
	}
	// A clone mode sandbox's clone is made on its first run.
	return e.ensureClone(ctx, sb)
}

func (e *env) ensureStarted(ctx context.Context, sb *sandbox.Sandbox, mode startMode) error {
	unlock, err := e.lockSandbox(sb)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := e.store.Status(sb)
	if err != nil {
		return err
	}
	detached := mode != startForSession
	switch st.Status {
	case sandbox.StatusRunning:
		if mode == startDetached && !st.Detached {
			if err := supervisor.Client(e.store, sb).Detach(ctx); err != nil {
				return userErr(err, "", "cannot reach sandbox %s", sb.Config.Name)
			}
		}
		return nil
	case sandbox.StatusStarting, sandbox.StatusStopping:
		// A supervisor that holds no lock is booting or shutting down
		// after its last session: let it finish, then start afresh.
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if st.Status == sandbox.StatusStarting {
			if err := e.waitRunning(wctx, sb); err == nil {
				return nil
			}
		}
		if err := supervisor.WaitGone(wctx, st.PID, sb.Config.ID); err != nil {
			return userErr(err, "see `sbx logs "+sb.Config.Name+"`", "sandbox %s is busy %s", sb.Config.Name, st.Status)
		}
	case sandbox.StatusCrashed:
		fmt.Fprintf(e.stderr, "sbx: sandbox %s had crashed (%s); starting it again\n", sb.Config.Name, st.Reason)
	}
	// A workspace holding sbx's own folders is refused at every start,
	// not only at create: the config may predate the check or be edited.
	if err := e.checkStateWorkspaces(sb.Config.Workspaces); err != nil {
		return err
	}
	// The workspace baseline of `sbx diff` is read while the start is
	// prepared, and finished before the VM boots: nothing in the guest
	// (not even a container Docker restarts at boot) can write before it.
	waitSnapshot := e.startSnapshot(sb)
	defer waitSnapshot()
	// The first start asks for the default network policy (or takes
	// balanced without a terminal). A malformed policy file does not stop
	// the start: the sandbox's network then denies everything.
	if err := e.ensurePolicyDefault(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		fmt.Fprintf(e.stderr, "sbx: warning: %v; the sandbox's network denies everything until the policy is fixed\n", err)
	}
	boot, err := e.bootSpec(ctx, sb)
	if err != nil {
		return err
	}
	boot.Detached = detached
	shownPhases, shownNotes, shownShare := 0, 0, false
	progress := func(s controlapi.Status) {
		if e.debug && !shownShare && s.Share != "" {
			shownShare = true
			if s.ShareWhy != "" {
				fmt.Fprintf(e.stderr, "boot: workspaces over %s: %s\n", s.Share, s.ShareWhy)
			} else {
				fmt.Fprintf(e.stderr, "boot: workspaces over %s (%s)\n", s.Share, boot.FileServer)
			}
		}
		for ; e.debug && shownPhases < len(s.Phases); shownPhases++ {
			p := s.Phases[shownPhases]
			fmt.Fprintf(e.stderr, "boot: %-18s %6d ms\n", p.Name, p.DurationMS)
		}
		for ; shownNotes < len(s.Notes); shownNotes++ {
			fmt.Fprintf(e.stderr, "sbx: warning: %s\n", s.Notes[shownNotes])
		}
	}
	waitSnapshot()
	if e.debug {
		if boot.Restore != nil {
			fmt.Fprintf(e.stderr, "boot: resuming snapshot %s\n", boot.Restore.Key)
		} else {
			fmt.Fprintln(e.stderr, "boot: cold")
		}
	}
	// From now on the disk moves on from the snapshot it was made from.
	if err := markBooted(sb); err != nil {
		return userErr(err, "check that the state folder is writable", "cannot record the start of sandbox %s", sb.Config.Name)
	}
	if err := supervisor.Launch(ctx, e.store, sb, boot, progress); err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		return userErr(err, "see `sbx logs "+sb.Config.Name+"` for the console and supervisor log", "%s", strings.TrimPrefix(err.Error(), ""))
	}
	return nil
}

// lockSandbox takes sb's lock and checks that sb still exists: a command
// that waited for the lock may find it removed by the one before.
func (e *env) lockSandbox(sb *sandbox.Sandbox) (func(), error) {
	unlock, err := e.store.Lock(sb)
	if err != nil {
		if _, gerr := e.store.Get(sb.Config.ID); gerr != nil {
			return nil, userErr(nil, "list sandboxes with `sbx ls`", "sandbox %s was removed", sb.Config.Name)
		}
		return nil, userErr(err, "check that the state folder is writable and the disk not full (`sbx diagnose`)", "cannot lock sandbox %s", sb.Config.Name)
	}
	if _, err := e.store.Get(sb.Config.ID); err != nil {
		unlock()
		return nil, userErr(nil, "list sandboxes with `sbx ls`", "sandbox %s was removed", sb.Config.Name)
	}
	return unlock, nil
}

func (e *env) waitRunning(ctx context.Context, sb *sandbox.Sandbox) error {
	c := supervisor.Client(e.store, sb)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.State == "running" {
			return nil
		}
		if err == nil && st.State == "failed" {
			return errors.New(st.Error)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
