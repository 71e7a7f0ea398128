package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/template"
	"github.com/sbx-dev/sbx/internal/vm"
	"github.com/sbx-dev/sbx/internal/vm/qemu"
)

// snapshotSpec is the snapshot a sandbox of cfg on template image tmpl
// starts from under boot's assets.
func snapshotSpec(boot supervisor.Boot, qemuVersion string, cfg sandbox.Config, tmpl sandbox.TemplateRef) snapshot.Spec {
	vmm := vm.DefaultJail(cfg.UID, cfg.GID)
	return snapshot.Spec{
		QEMU: boot.QEMU, QEMUVersion: qemuVersion,
		Kernel: boot.Kernel, Initrd: boot.Initrd, Cmdline: supervisor.GuestCmdline,
		Accel: vm.Accel(boot.Accel), TSCkHz: boot.TSCkHz, CPUs: boot.CPUs, MemoryMiB: cfg.MemoryMiB,
		DiskBytes: cfg.DiskBytes, DockerDiskBytes: cfg.DockerDiskBytes,
		TemplateName: tmpl.Name, TemplateID: tmpl.ID, TemplateImage: tmpl.Image,
		VMMUID: vmm.UID, VMMGID: vmm.GID,
	}
}

// prepareSnapshot returns the snapshot a new sandbox of cfg starts from,
// saving it first when there is none. A sandbox that cannot use one gets
// nil and a line on stderr saying why it will boot cold.
func (e *env) prepareSnapshot(ctx context.Context, cfg sandbox.Config, tmpl template.Template) (*snapshot.Snapshot, error) {
	if n := len(cfg.Workspaces); n > snapshot.Shares {
		fmt.Fprintf(e.stderr, "sbx: note: %d workspaces, and snapshot starts have %d share slots: this sandbox boots cold\n", n, snapshot.Shares)
		return nil, nil
	}
	boot, qemuVersion, err := e.bootAssets(ctx, cfg.Accel, cfg.CPUs, nil)
	if err != nil {
		return nil, err
	}
	ref := sandbox.TemplateRef{Name: tmpl.Name, ID: tmpl.ID, Image: tmpl.Image}
	spec := snapshotSpec(boot, qemuVersion, cfg, ref)
	qemuImg, err := e.qemuImg(ctx)
	if err != nil {
		return nil, err
	}
	snap, err := snapshot.Ensure(ctx, e.dirs.Cache, spec, snapshot.Options{
		QEMUImg: qemuImg, Backend: qemu.New(boot.QEMU), Progress: e.stderr, Log: e.log,
	})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		fmt.Fprintf(e.stderr, "sbx: warning: no fast start for template %s: %v; the sandbox boots cold\n", tmpl.Name, err)
		return nil, nil
	}
	return snap, nil
}

// restoreFor says whether this start of sb resumes its snapshot: only its
// first start (afterwards its disk has moved on), unless --cold, and only
// while the snapshot still matches what this start would boot.
func (e *env) restoreFor(sb *sandbox.Sandbox, boot supervisor.Boot, qemuVersion string) (*supervisor.Restore, error) {
	key := sb.Config.Snapshot
	if key == "" {
		return nil, nil
	}
	// The sandbox's disk is an overlay of the snapshot's: without it the
	// sandbox cannot boot at all, cold or not.
	if _, err := os.Stat(snapshot.DiskOf(e.dirs.Cache, key)); err != nil {
		return nil, userErr(err, "remove it with `sbx rm "+sb.Config.Name+"` and create it again",
			"sandbox %s cannot start: its disk is based on snapshot %s, which is gone from the cache", sb.Config.Name, key)
	}
	if e.cold {
		return nil, nil
	}
	if _, err := os.Stat(sb.Path(sandbox.BootedFile)); err == nil {
		return nil, nil
	}
	spec := snapshotSpec(boot, qemuVersion, sb.Config, sb.Config.Template)
	snap, err := snapshot.Lookup(e.dirs.Cache, key)
	if err != nil {
		fmt.Fprintf(e.stderr, "sbx: note: the snapshot sandbox %s was made from is incomplete (%v); booting cold\n", sb.Config.Name, err)
		return nil, nil
	}
	if spec.Key() != key {
		fmt.Fprintf(e.stderr, "sbx: note: the snapshot sandbox %s was made from no longer matches (%s); booting cold\n", sb.Config.Name, snapshot.Changed(spec, snap.Meta))
		return nil, nil
	}
	return &supervisor.Restore{Key: key, State: snap.State, RAM: snap.RAM, Empty: snap.Empty, Console: snap.Console, Spec: snap.Meta.Spec}, nil
}

// markBooted records that sb's disk has been booted once, before the VM
// starts: from then on it has moved on from its snapshot.
func markBooted(sb *sandbox.Sandbox) error {
	if _, err := os.Stat(sb.Path(sandbox.BootedFile)); err == nil {
		return nil
	}
	return sandbox.WriteFileAtomic(sb.Path(sandbox.BootedFile), nil, 0o600)
}

// releaseLeases drops the leases the disk of a sandbox of cfg held on its
// template image and snapshot (the sandbox is removed, or its creation
// failed), so they do not hold them for the grace a create in flight gets.
func (e *env) releaseLeases(cfg sandbox.Config) {
	disk := filepath.Join(e.store.DirOf(cfg.ID), sandbox.DiskFile)
	template.Release(e.dirs.Cache, cfg.Template.ID, disk)
	if cfg.Snapshot != "" {
		snapshot.Release(e.dirs.Cache, cfg.Snapshot, disk)
	}
}
