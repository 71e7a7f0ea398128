package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/secrets"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// LaunchFunc starts sb's supervisor with boot and returns once its VM
// runs (progress gets each new status), as supervisor.Launch does.
type LaunchFunc func(ctx context.Context, store *sandbox.Store, sb *sandbox.Sandbox, boot supervisor.Boot, progress func(controlapi.Status)) error

// Manager runs the lifecycle of the sandboxes of one store.
type Manager struct {
	Dirs  paths.Dirs
	Store *sandbox.Store
	Log   *slog.Logger
	// Events receives the calls' progress and warnings, on the calling
	// goroutine; nil drops them.
	Events func(Event)
	// Launch starts a supervisor; nil is supervisor.Launch (a process of
	// its own).
	Launch LaunchFunc
	// SaveSnapshot returns a template's snapshot, saving it first; nil is
	// supervisor.SaveSnapshot (a snapshot supervisor process).
	SaveSnapshot func(ctx context.Context, job supervisor.SnapshotJob, progress io.Writer) (*snapshot.Snapshot, error)
	// Secrets opens the credential store whose sandbox-scoped secrets go
	// with a removed sandbox; nil leaves them.
	Secrets func() *secrets.Store
	// Progress receives the output of long steps (a kernel download, a
	// snapshot saved); nil discards it.
	Progress io.Writer

	warnedTCG atomic.Bool // the TCG notice was given
}

// New is a Manager of the store in dirs.
func New(dirs paths.Dirs, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{Dirs: dirs, Store: sandbox.NewStore(dirs), Log: log}
}

// Get finds a sandbox by name or ID.
func (m *Manager) Get(name string) (*sandbox.Sandbox, error) {
	sb, err := m.Store.Get(name)
	if err != nil {
		return nil, newErr(NotFound, name, err, "list sandboxes with `sbx ls`", "no sandbox named %q", name)
	}
	return sb, nil
}

// Lock takes sb's lock, waiting for the command that holds it until ctx
// ends, and checks that sb still exists: a call that waited may find it
// removed by the one before.
func (m *Manager) Lock(ctx context.Context, sb *sandbox.Sandbox) (func(), error) {
	// Its config file, not Store.Get: a damaged sandbox (Damaged) is
	// locked to be removed. Checked first too, so the lock file does not
	// make the folder of a sandbox removed meanwhile again.
	gone := func() error {
		_, err := os.Stat(sb.Path(sandbox.ConfigFile))
		return err
	}
	removed := func(err error) error {
		return newErr(NotFound, sb.Config.Name, err, "list sandboxes with `sbx ls`", "sandbox %s was removed", sb.Config.Name)
	}
	if err := gone(); err != nil {
		return nil, removed(err)
	}
	unlock, err := m.Store.LockContext(ctx, sb)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if gerr := gone(); gerr != nil {
			return nil, removed(gerr)
		}
		return nil, newErr(Internal, sb.Config.Name, err, "check that the state folder is writable and the disk not full (`sbx diagnose`)", "cannot lock sandbox %s", sb.Config.Name)
	}
	if err := gone(); err != nil {
		unlock()
		// The lock file may have made the folder again: take it out
		// (only when nothing else is in it).
		os.Remove(sb.Path(sandbox.LockFile))
		os.Remove(sb.Dir)
		return nil, removed(err)
	}
	return unlock, nil
}

// lockedStatus takes sb's lock and reads its state.
func (m *Manager) lockedStatus(ctx context.Context, sb *sandbox.Sandbox) (func(), sandbox.State, error) {
	unlock, err := m.Lock(ctx, sb)
	if err != nil {
		return nil, sandbox.State{}, err
	}
	st, err := m.Store.Status(sb)
	if err != nil {
		unlock()
		return nil, st, stateErr(sb, err)
	}
	return unlock, st, nil
}

// stateErr is a state.json of sb that cannot be read. The file only
// records whether sb's VM runs (a missing one reads as stopped), so the
// way back is to delete it, which keeps the disk; `sbx rm -f` deletes
// the disk and is only the last resort.
func stateErr(sb *sandbox.Sandbox, err error) *Error {
	name, path := sb.Config.Name, sb.Path(sandbox.StateFile)
	hint := fmt.Sprintf("delete %s to recover the sandbox with its disk (the file only records whether the VM runs; first check that no VM of it is left: `pgrep -af 'sbx supervise %s'`); `sbx rm -f %s` deletes the disk too: use it only as a last resort",
		path, sb.Config.ID, name)
	return newErr(Internal, name, err, hint, "cannot read the state of sandbox %s (%s): %v", name, path, err)
}

// StartMode says how a call wants a sandbox's VM kept.
type StartMode int

const (
	// ForSession (an attached `sbx run`): a VM it starts stops when its
	// last session ends.
	ForSession StartMode = iota
	// InBackground (exec, cp, create): a VM it starts keeps running
	// until stopped; a running VM keeps its mode.
	InBackground
	// Detached (`run -d`): like InBackground, and a running VM becomes
	// detached too.
	Detached
)

// StartRequest is how to start a sandbox. Check, Baseline and Policy are
// the front end's steps for now (docs/architecture.md).
type StartRequest struct {
	Mode StartMode
	// Cold boots without the sandbox's snapshot even on its first start.
	Cold bool
	// Prepare resolves the boot of this start; nil is PrepareBoot.
	Prepare func(ctx context.Context, sb *sandbox.Sandbox) (supervisor.Boot, error)
	// Check vets the sandbox before anything starts (its workspaces).
	Check func(sb *sandbox.Sandbox) error
	// Baseline starts what must be done before the VM can write (the
	// workspace snapshot of `sbx diff`) and returns the func that waits
	// for it.
	Baseline func(sb *sandbox.Sandbox) (wait func())
	// Policy makes sure a network policy exists (the CLI may ask); its
	// failure only warns: the sandbox's network then denies everything.
	Policy func(ctx context.Context) error
}

// Start starts sb unless its VM runs, as req.Mode says. A crashed sandbox
// is recovered by a fresh start (a Notice says so); one starting or
// stopping is waited for.
func (m *Manager) Start(ctx context.Context, sb *sandbox.Sandbox, req StartRequest) error {
	unlock, st, err := m.lockedStatus(ctx, sb)
	if err != nil {
		return err
	}
	defer unlock()
	name := sb.Config.Name
	switch st.Status {
	case sandbox.StatusRunning:
		if req.Mode == Detached && !st.Detached {
			if err := supervisor.Client(m.Store, sb).Detach(ctx); err != nil {
				return newErr(Failed, name, err, "", "cannot reach sandbox %s", name)
			}
		}
		return nil
	case sandbox.StatusStarting, sandbox.StatusStopping:
		// A supervisor that holds no lock is booting or shutting down
		// after its last session: let it finish, then start afresh.
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if st.Status == sandbox.StatusStarting {
			if err := m.WaitRunning(wctx, sb); err == nil {
				return nil
			}
		}
		if err := supervisor.WaitGone(wctx, st.PID, sb.Config.ID); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return newErr(Busy, name, err, "see `sbx logs "+name+"`", "sandbox %s is busy %s", name, st.Status)
		}
	case sandbox.StatusCrashed:
		m.emit(Event{Kind: Notice, Sandbox: name, Text: fmt.Sprintf("sandbox %s had crashed (%s); starting it again", name, st.Reason)})
	}
	// A workspace holding sbx's own folders is refused at every start,
	// not only at create: the config may predate the check or be edited.
	if err := m.CheckWorkspaces(sb.Config.Workspaces); err != nil {
		return err
	}
	// A damaged ports.json refuses the start (it says how to recover):
	// the sandbox would run without the ports the user published.
	if _, err := m.readPorts(sb); err != nil {
		return err
	}
	if req.Check != nil {
		if err := req.Check(sb); err != nil {
			return err
		}
	}
	wait := func() {}
	if req.Baseline != nil {
		wait = req.Baseline(sb)
	}
	defer wait()
	if req.Policy != nil {
		if err := req.Policy(ctx); err != nil {
			if errors.Is(err, context.Canceled) {
				return err
			}
			m.emit(Event{Kind: Warning, Sandbox: name, Text: fmt.Sprintf("%v; the sandbox's network denies everything until the policy is fixed", err)})
		}
	}
	prepare := req.Prepare
	if prepare == nil {
		prepare = func(ctx context.Context, sb *sandbox.Sandbox) (supervisor.Boot, error) {
			return m.PrepareBoot(ctx, sb, req.Cold)
		}
	}
	boot, err := prepare(ctx, sb)
	if err != nil {
		return err
	}
	boot.Detached = req.Mode != ForSession
	wait()
	if boot.Restore != nil {
		m.emit(Event{Kind: Detail, Sandbox: name, Text: "resuming snapshot " + boot.Restore.Key})
	} else {
		m.emit(Event{Kind: Detail, Sandbox: name, Text: "cold"})
	}
	// From now on the disk moves on from the snapshot it was made from.
	if err := MarkBooted(sb); err != nil {
		return newErr(Internal, name, err, "check that the state folder is writable", "cannot record the start of sandbox %s", name)
	}
	launch := m.Launch
	if launch == nil {
		launch = supervisor.Launch
	}
	if err := launch(ctx, m.Store, sb, boot, m.progress(name, boot)); err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		return newErr(Failed, name, err, "see `sbx logs "+name+"` for the console and supervisor log", "%s", err.Error())
	}
	return nil
}

// progress turns a starting supervisor's statuses into events: the share
// transport once, each finished phase, each note.
func (m *Manager) progress(name string, boot supervisor.Boot) func(controlapi.Status) {
	phases, notes, share := 0, 0, false
	return func(s controlapi.Status) {
		if !share && s.Share != "" {
			share = true
			text := "workspaces over " + s.Share + " (" + boot.FileServer + ")"
			if s.ShareWhy != "" {
				text = "workspaces over " + s.Share + ": " + s.ShareWhy
			}
			m.emit(Event{Kind: Detail, Sandbox: name, Text: text})
		}
		for ; phases < len(s.Phases); phases++ {
			p := s.Phases[phases]
			m.emit(Event{Kind: Phase, Sandbox: name, Phase: p.Name, Duration: time.Duration(p.DurationMS) * time.Millisecond})
		}
		for ; notes < len(s.Notes); notes++ {
			m.emit(Event{Kind: Warning, Sandbox: name, Text: s.Notes[notes]})
		}
	}
}

// MarkBooted records that a start of sb began: later starts boot cold,
// since its disk moves on from the snapshot it was made from.
func MarkBooted(sb *sandbox.Sandbox) error {
	if _, err := os.Stat(sb.Path(sandbox.BootedFile)); err == nil {
		return nil
	}
	return sandbox.WriteFileAtomic(sb.Path(sandbox.BootedFile), nil, 0o600)
}

// WaitRunning waits until sb's supervisor reports running, or failed.
func (m *Manager) WaitRunning(ctx context.Context, sb *sandbox.Sandbox) error {
	c := supervisor.Client(m.Store, sb)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.State == controlapi.StateRunning {
			return nil
		}
		if err == nil && st.State == controlapi.StateFailed {
			return errors.New(st.Error)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StopTimeout bounds a stop: the guest's clean shutdown and the
// supervisor's exit.
const StopTimeout = 90 * time.Second

// Stop shuts sb down if it runs and waits for its supervisor to exit. A
// crashed sandbox is marked stopped.
func (m *Manager) Stop(ctx context.Context, sb *sandbox.Sandbox) error {
	unlock, err := m.Lock(ctx, sb)
	if err != nil {
		return err
	}
	defer unlock()
	return m.StopLocked(ctx, sb)
}

// StopLocked is Stop for a caller that holds sb's lock.
func (m *Manager) StopLocked(ctx context.Context, sb *sandbox.Sandbox) error {
	name := sb.Config.Name
	st, err := m.Store.Status(sb)
	if err != nil {
		return stateErr(sb, err)
	}
	switch st.Status {
	case sandbox.StatusStopped:
		return nil
	case sandbox.StatusCrashed:
		if err := m.Store.SetState(sb, sandbox.State{Status: sandbox.StatusStopped}); err != nil {
			return newErr(Internal, name, err, "", "cannot record sandbox %s stopped", name)
		}
		return nil
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, StopTimeout)
	defer cancel()
	if err := supervisor.Client(m.Store, sb).Stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
		m.Log.Debug("stop request", "sandbox", name, "err", err)
	}
	if err := supervisor.WaitGone(ctx, st.PID, sb.Config.ID); err != nil {
		if parent.Err() != nil {
			return parent.Err()
		}
		return newErr(Failed, name, err, "see `sbx logs "+name+"`", "sandbox %s did not stop within %s", name, StopTimeout)
	}
	return nil
}
