package lifecycle

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sbx-dev/sbx/internal/disk"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/template"
)

// Rule is a network rule a new sandbox is made with, scoped to it.
type Rule struct {
	Action   policy.Action
	Resource policy.Resource
	// Origin is who asked ("user", "agent:NAME").
	Origin string
}

// CreateRequest is a new sandbox: its configuration, checked by the front
// end (an empty ID is made here), the template its disk comes from, and
// what it must never exist without: its own network rules and published
// ports.
type CreateRequest struct {
	Config   sandbox.Config
	Template template.Template
	// Cold makes it without its template's snapshot: it boots cold.
	Cold  bool
	Rules []Rule
	Ports []sandbox.Port
}

// Create makes a sandbox as one transaction: the snapshot of its
// template and VM shape (saved on first use, outside the store lock),
// then under the store lock its folder, rules, ports, disk and leases;
// it is published (listed, found) only once all of them are in place, and
// a failure takes every one of them out again. A name that exists is a
// Conflict on "name".
func (m *Manager) Create(ctx context.Context, req CreateRequest) (*sandbox.Sandbox, error) {
	cfg, tmpl := req.Config, req.Template
	if cfg.ID == "" {
		cfg.ID = sandbox.NewID()
	}
	if !tmpl.Docker {
		cfg.DockerDiskBytes = 0
	}
	for i, p := range req.Ports {
		for _, q := range req.Ports[:i] {
			if sandbox.SamePort(p, q) {
				e := newErr(Conflict, cfg.Name, nil, "", "port %s is asked for twice", p)
				e.Field = "ports"
				return nil, e
			}
		}
	}
	// Checked before the snapshot, which boots a VM: a disk smaller than
	// the template's image (raw: its size is the disk's) cannot be made.
	if st, err := os.Stat(tmpl.Image); err == nil && cfg.DiskBytes > 0 && cfg.DiskBytes < st.Size() {
		e := newErr(Invalid, cfg.Name, disk.ErrTooSmall, "give a larger disk size", "the disk size asked for is smaller than the template's (%d MiB)", st.Size()>>20)
		e.Field = "disk"
		return nil, e
	}
	qemuImg, err := m.QEMUImg(ctx)
	if err != nil {
		return nil, err
	}
	// The pre-booted snapshot of this template and VM shape: saved once
	// (a boot, seconds), outside the store lock like the template.
	var snap *snapshot.Snapshot
	if !req.Cold {
		if snap, err = m.PrepareSnapshot(ctx, cfg, tmpl); err != nil {
			return nil, err
		}
	}
	unlock, err := m.Store.LockStore()
	if err != nil {
		return nil, newErr(Internal, cfg.Name, err, "check that the state folder is writable and the disk not full (`sbx diagnose`)", "cannot lock the sandbox store")
	}
	defer unlock()
	m.Store.CleanStale()
	if _, err := m.Store.Get(cfg.Name); err == nil {
		e := newErr(Conflict, cfg.Name, nil, "pick another name or remove it with `sbx rm "+cfg.Name+"`", "sandbox %s already exists", cfg.Name)
		e.Field = "name"
		return nil, e
	}
	cfg.Template = sandbox.TemplateRef{Name: tmpl.Name, ID: tmpl.ID, Image: tmpl.Image}
	if snap != nil {
		cfg.Snapshot = snap.Key
	}
	sb, err := m.Store.Create(cfg)
	if err != nil {
		if errors.Is(err, sandbox.ErrNameTaken) {
			e := newErr(Conflict, cfg.Name, err, "pick another name", "sandbox %s already exists", cfg.Name)
			e.Field = "name"
			return nil, e
		}
		return nil, newErr(Internal, cfg.Name, err, "", "cannot create sandbox %s", cfg.Name)
	}
	rules := policy.NewStore(m.Dirs.Config)
	undo := func() {
		m.Store.Discard(sb)
		m.ReleaseLeases(cfg)
		if len(req.Rules) > 0 {
			_, _ = rules.RemoveSandbox(cfg.ID)
		}
	}
	if len(req.Rules) > 0 {
		now := time.Now().UTC()
		err := rules.Update(func(f *policy.File) error {
			for _, r := range req.Rules {
				rule := policy.NewRule(r.Action, r.Resource, cfg.ID, r.Origin, now)
				if !slices.ContainsFunc(f.Rules, func(x policy.Rule) bool { return x.ID == rule.ID }) {
					f.Rules = append(f.Rules, rule)
				}
			}
			return nil
		})
		if err != nil {
			undo()
			return nil, newErr(Internal, cfg.Name, err, "check the policy file with `sbx policy ls`", "cannot add the network rules of sandbox %s", cfg.Name)
		}
	}
	if len(req.Ports) > 0 {
		if err := m.Store.WritePorts(sb, req.Ports); err != nil {
			undo()
			return nil, newErr(Internal, cfg.Name, err, "", "cannot record the ports of %s", cfg.Name)
		}
	}
	// The lease names the disk's final path: it holds the image once the
	// sandbox is published, in whichever SBX_HOME.
	diskPath := filepath.Join(m.Store.DirOf(cfg.ID), sandbox.DiskFile)
	if snap != nil {
		// Backed by the snapshot's disk, itself an overlay of the template
		// image: the disk as it was when the snapshot was saved.
		err = disk.CreateOverlay(ctx, qemuImg, snap.Disk, "qcow2", sb.Path(sandbox.DiskFile), cfg.DiskBytes)
		if err == nil {
			err = snapshot.Lease(m.Dirs.Cache, snap.Key, diskPath)
		}
	} else {
		err = disk.CreateOverlay(ctx, qemuImg, tmpl.Image, "raw", sb.Path(sandbox.DiskFile), cfg.DiskBytes)
	}
	if err == nil {
		err = template.Lease(m.Dirs.Cache, tmpl.ID, diskPath)
	}
	if err == nil {
		err = m.Store.Commit(sb)
	}
	if err != nil {
		undo()
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		if errors.Is(err, disk.ErrTooSmall) {
			e := newErr(Invalid, cfg.Name, err, "give a larger disk size", "the disk size asked for is smaller than the template's")
			e.Field = "disk"
			return nil, e
		}
		return nil, newErr(Internal, cfg.Name, err, "check free disk space with `sbx diagnose`", "cannot create the disk of sandbox %s", cfg.Name)
	}
	return sb, nil
}
