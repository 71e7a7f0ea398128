package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/sbx-dev/sbx/internal/clone"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
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
func (m *Manager) Remove(ctx context.Context, sb *sandbox.Sandbox, req RemoveRequest) error {
	unlock, st, err := m.lockedStatus(ctx, sb)
	if err != nil {
		return err
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
	template.Release(m.Dirs.Cache, cfg.Template.ID, disk)
	if cfg.Snapshot != "" {
		snapshot.Release(m.Dirs.Cache, cfg.Snapshot, disk)
	}
}
