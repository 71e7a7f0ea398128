package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/sbx-dev/sbx/internal/clone"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/template"
)

// RemoveRequest is how to remove a sandbox.
type RemoveRequest struct {
	// Force stops a running sandbox first; without it one is a Conflict
	// on "force".
	Force bool
}

// Remove deletes sb: its VM state, disk and logs (never a workspace),
// the leases its disk held, the host remote of a clone mode sandbox, its
// sandbox-scoped secrets and rules; then template images and snapshots
// nothing holds any more.
//
// With Force, a sandbox whose state file cannot be read (torn, garbage)
// goes too: its supervisor, if one still answers, is told to stop first.
func (m *Manager) Remove(ctx context.Context, sb *sandbox.Sandbox, req RemoveRequest) error {
	unlock, st, err := m.lockedStatus(ctx, sb)
	if err != nil {
		if _, ok := AsError(err); !ok || !req.Force || m.stateErr(sb) == nil {
			return err
		}
		if unlock, err = m.Lock(ctx, sb); err != nil {
			return err
		}
		m.stopUnknown(ctx, sb)
		st = sandbox.State{Status: sandbox.StatusStopped}
	}
	defer unlock()
	name := sb.Config.Name
	switch st.Status {
	case sandbox.StatusStopped, sandbox.StatusCrashed:
	default:
		if !req.Force {
			e := newErr(Conflict, name, nil, "stop it with `sbx stop "+name+"` or use `sbx rm -f`", "sandbox %s is %s", name, st.Status)
			e.Field = "force"
			return e
		}
		if err := m.StopLocked(ctx, sb); err != nil {
			return err
		}
	}
	if err := m.Store.Remove(sb); err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		return newErr(Internal, name, err, "", "cannot remove sandbox %s", name)
	}
	m.ReleaseLeases(sb.Config)
	if c := sb.Config; c.Clone != nil && len(c.Workspaces) > 0 {
		if err := clone.RemoveHostRemote(ctx, c.Workspaces[0].Path, name); err != nil {
			m.emit(Event{Kind: Warning, Sandbox: name, Text: fmt.Sprintf("remote %s left in %s: %v", clone.HostRemote(name), filepath.Clean(c.Workspaces[0].Path), err)})
		}
	}
	// Sandbox-scoped secrets and rules are keyed by the sandbox id and go
	// with it.
	if m.Secrets != nil {
		if _, err := m.Secrets().RemoveSandbox(sb.Config.ID); err != nil {
			return newErr(Internal, name, err, "remove them with `sbx secret rm --sandbox`", "sandbox %s removed, but its secrets could not be", name)
		}
	}
	if _, err := policy.NewStore(m.Dirs.Config).RemoveSandbox(sb.Config.ID); err != nil {
		return newErr(Internal, name, err, "remove them with `sbx policy rm network --id ID`", "sandbox %s removed, but its policy rules could not be", name)
	}
	// A template image that only this sandbox still held (its template
	// was rebuilt or replaced since) goes now.
	if _, err := template.Collect(ctx, m.Dirs.Cache); err != nil {
		m.Log.Debug("collect template images", "err", err)
	}
	// After the images: a snapshot whose image just went goes too.
	if _, err := snapshot.Collect(m.Dirs.Cache); err != nil {
		m.Log.Debug("collect snapshots", "err", err)
	}
	return nil
}

// ReleaseLeases drops the leases the disk of a sandbox of cfg held on its
// template image and snapshot (the sandbox is removed, or its creation
// failed), so they do not hold them for the grace a create in flight gets.
func (m *Manager) ReleaseLeases(cfg sandbox.Config) {
	disk := filepath.Join(m.Store.DirOf(cfg.ID), sandbox.DiskFile)
	if cfg.Template.ID != "" { // unknown for a damaged sandbox
		template.Release(m.Dirs.Cache, cfg.Template.ID, disk)
	}
	if cfg.Snapshot != "" {
		snapshot.Release(m.Dirs.Cache, cfg.Snapshot, disk)
	}
}

// errDamagedState marks a state file that exists and cannot be read.
var errDamagedState = errors.New("damaged state file")

// stateErr is errDamagedState when sb's state file cannot be read.
func (m *Manager) stateErr(sb *sandbox.Sandbox) error {
	if _, err := m.Store.ReadState(sb); err != nil {
		return fmt.Errorf("%w: %w", errDamagedState, err)
	}
	return nil
}

// stopUnknown asks sb's supervisor to stop, when its state (and so its
// process) is unknown, and waits a little for it to go.
func (m *Manager) stopUnknown(ctx context.Context, sb *sandbox.Sandbox) {
	ctx, cancel := context.WithTimeout(ctx, StopTimeout)
	defer cancel()
	c := supervisor.Client(m.Store, sb)
	if err := c.Stop(ctx); err != nil {
		m.Log.Debug("stop of a sandbox with a damaged state", "sandbox", sb.Config.Name, "err", err)
		return
	}
	for ctx.Err() == nil {
		if _, err := c.Status(ctx); err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Damaged is the sandbox folders of the store whose config cannot be read,
// as placeholders Remove takes (with Force): their name is their id.
func (m *Manager) Damaged() []*sandbox.Sandbox {
	var out []*sandbox.Sandbox
	for _, d := range m.Store.Damaged() {
		out = append(out, d.Placeholder())
	}
	return out
}

// GetDamaged is the placeholder of the damaged sandbox folder id
// (Damaged), if there is one.
func (m *Manager) GetDamaged(id string) (*sandbox.Sandbox, bool) {
	for _, d := range m.Damaged() {
		if d.Config.ID == id {
			return d, true
		}
	}
	return nil, false
}
