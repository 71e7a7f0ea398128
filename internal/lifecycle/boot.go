package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/sbx-dev/sbx/internal/bootassets"
	"github.com/sbx-dev/sbx/internal/hostcheck"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/resolve"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/template"
	"github.com/sbx-dev/sbx/internal/vm"
)

// Boot preparation: what a start needs resolved on the host (QEMU, the
// kernel, the initramfs, the accelerator, the file server, limits), and
// whether it resumes the sandbox's snapshot.

// kernelOptions are the user's kernel choices from the environment.
func (m *Manager) KernelOptions() bootassets.Options {
	return bootassets.Options{
		KernelPath: paths.Getenv("SBX_KERNEL"),
		ModulesDir: paths.Getenv("SBX_KERNEL_MODULES"),
		Logger:     m.Log,
	}
}

// agentBinary finds sbx-agent: SBX_AGENT, else next to the sbx binary.
func AgentBinary() (string, error) {
	if p := paths.Getenv("SBX_AGENT"); p != "" {
		return p, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	p := filepath.Join(filepath.Dir(exe), "sbx-agent")
	if _, err := os.Stat(p); err != nil {
		return "", newErr(Invalid, "", err, "build it with `make build` (it goes next to sbx), or set SBX_AGENT", "the guest agent binary sbx-agent is missing beside %s", exe)
	}
	return p, nil
}

func (m *Manager) qemu(ctx context.Context, shared []string) (string, string, error) {
	avoid := m.AllWorkspaces(shared)
	if p := paths.Getenv("SBX_QEMU"); p != "" {
		real, err := hostcheck.Program(p, avoid)
		if err != nil {
			return "", "", m.fail(nil, programHint, "SBX_QEMU refused: %v", err)
		}
		return real, "", nil
	}
	path, version, err := hostcheck.QEMU(ctx, avoid)
	if errors.Is(err, hostcheck.ErrUntrusted) {
		return "", "", m.fail(nil, programHint, "the QEMU on PATH is refused: %v", err)
	}
	if err != nil {
		return "", "", m.fail(err, "install it: apt-get install qemu-system-x86 (or run `make deps`)", "QEMU is not installed")
	}
	return path, version, nil
}

// programHint is the hint of a refused QEMU, qemu-img or virtiofsd.
const programHint = "use the system's copy (apt-get install qemu-system-x86 qemu-utils), or one in a folder only you (as root: only root) can write, outside every workspace; fix PATH if a workspace's folder is on it"

func (m *Manager) QEMUImg(ctx context.Context) (string, error) {
	p, err := hostcheck.QEMUImg(ctx, m.AllWorkspaces(nil))
	if errors.Is(err, hostcheck.ErrUntrusted) {
		return "", m.fail(nil, programHint, "the qemu-img on PATH is refused: %v", err)
	}
	if err != nil {
		return "", m.fail(err, "install it: apt-get install qemu-utils (or run `make deps`)", "qemu-img is not installed")
	}
	return p, nil
}

// allWorkspaces are the workspaces of every sandbox in the store, and
// extra: where a guest can write as the workspace owner, so where no
// program sbx runs may lie.
func (m *Manager) AllWorkspaces(extra []string) []string {
	out := append([]string(nil), extra...)
	all, _ := m.Store.List()
	for _, sb := range all {
		for _, w := range sb.Config.Workspaces {
			out = append(out, w.Path)
		}
	}
	return out
}

// bootSpec resolves what a start of sb needs: QEMU, kernel, initramfs,
// the accelerator, and whether it resumes sb's snapshot.
func (m *Manager) PrepareBoot(ctx context.Context, sb *sandbox.Sandbox, cold bool) (supervisor.Boot, error) {
	if _, err := os.Stat(sb.Config.Template.Image); err != nil {
		return supervisor.Boot{}, m.fail(err, "remove the sandbox with `sbx rm "+sb.Config.Name+"` and create it again", "the template image of sandbox %s is missing", sb.Config.Name)
	}
	if err := CheckVMMReach(ctx, sb.Config); err != nil {
		return supervisor.Boot{}, err
	}
	var shared []string
	for _, w := range sb.Config.Workspaces {
		shared = append(shared, w.Path)
	}
	b, qemuVersion, err := m.BootAssets(ctx, sb.Config.Accel, sb.Config.CPUs, sb.Config.UID, shared)
	if err != nil {
		return b, err
	}
	b.MAC = sb.Config.MAC
	if b.Restore, err = m.restoreFor(sb, b, qemuVersion, cold); err != nil {
		return b, err
	}
	return b, nil
}

// bootAssets resolves the sandbox-independent part of a start: QEMU (and
// its version), kernel, initramfs, accelerator (want: auto, kvm, tcg), the
// CPU count (0: the accelerator's default), TSC frequency, folders.
// shared are the folders the guest can write, where no hosts override
// may lie.
func (m *Manager) BootAssets(ctx context.Context, want string, cpus, vmmUID int, shared []string) (supervisor.Boot, string, error) {
	var b supervisor.Boot
	q, qemuVersion, err := m.qemu(ctx, shared)
	if err != nil {
		return b, "", err
	}
	k, err := m.KernelOptions().EnsureKernel(ctx, m.Dirs.Cache, m.progressOut())
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return b, "", err
		}
		return b, "", m.fail(err, "see the message above; `sbx diagnose` checks the host", "cannot prepare the guest kernel")
	}
	agent, err := AgentBinary()
	if err != nil {
		return b, "", err
	}
	initrd, err := bootassets.EnsureInitramfs(ctx, m.Dirs.Cache, k, agent)
	if err != nil {
		return b, "", m.fail(err, "", "cannot build the initramfs")
	}
	accel, err := m.chooseAccel(ctx, want, q, k, initrd)
	if err != nil {
		return b, "", err
	}
	tsc, err := hostcheck.TSCkHz()
	if err != nil && accel == vm.AccelTCG {
		m.Log.Warn("cannot read the host TSC frequency; the guest clock may drift", "err", err)
	}
	hostsFile := paths.Getenv("SBX_HOSTS_FILE")
	if hostsFile != "" {
		real, err := resolve.CheckHostsFile(hostsFile, shared, os.Getuid(), vmmUID)
		if err != nil {
			return b, "", m.fail(nil, "point SBX_HOSTS_FILE at a hosts-format file only you can write, outside every workspace, or unset it", "SBX_HOSTS_FILE refused: %v", err)
		}
		hostsFile = real
	}
	fileServer, noFileServer, err := m.lookupFileServer(m.AllWorkspaces(shared))
	if err != nil {
		return b, "", err
	}
	var lim supervisor.Limits
	for _, k := range []struct {
		env string
		to  *int
	}{{"SBX_MAX_FLOWS", &lim.Flows}, {"SBX_MAX_DNS", &lim.DNS}} {
		v := paths.Getenv(k.env)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1<<20 {
			return b, "", m.fail(nil, "set it to a whole number from 1 to 1048576, or unset it", "%s=%q is not a valid limit", k.env, v)
		}
		*k.to = n
	}
	if cpus == 0 {
		// The default follows the accelerator of this start: 1 under TCG,
		// where a second emulated CPU slows boot down, 2 with KVM.
		cpus = 1
		if accel == vm.AccelKVM {
			cpus = 2
		}
	}
	return supervisor.Boot{
		QEMU: q, Kernel: k.Path, KernelRelease: k.Release, Initrd: initrd,
		Accel: string(accel), TSCkHz: tsc, CPUs: cpus,
		ConfigDir: m.Dirs.Config, CacheDir: m.Dirs.Cache, HostsFile: hostsFile, Limits: lim,
		FileServer: fileServer, NoFileServer: noFileServer,
	}, qemuVersion, nil
}

// fileServerPaths are where distributions put virtiofsd when it is not
// on PATH: the Rust server's packages, and QEMU's own (before 8.0).
var fileServerPaths = []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}

// lookupFileServer finds the virtio-fs server workspaces are served by on
// cold boots: $SBX_VIRTIOFSD (a path, or "none" for 9p), else virtiofsd
// on PATH or where distributions install it. Without one it returns ""
// and why. One hostcheck.Program refuses (inside a workspace in avoid,
// or writable by others) is an error, not a fallback.
func (m *Manager) lookupFileServer(avoid []string) (path, why string, err error) {
	refused := func(p string, err error) (string, string, error) {
		return "", "", m.fail(nil, programHint+"; or SBX_VIRTIOFSD=none for 9p", "the virtio-fs server %s is refused: %v", p, err)
	}
	switch v := paths.Getenv("SBX_VIRTIOFSD"); v {
	case "none":
		return "", "SBX_VIRTIOFSD=none", nil
	case "":
	default:
		fi, err := os.Stat(v)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 || !filepath.IsAbs(v) {
			return "", "", m.fail(nil, "set it to the absolute path of a virtiofsd, to none for 9p shares, or unset it", "SBX_VIRTIOFSD=%q is not an executable file", v)
		}
		real, err := hostcheck.Program(v, avoid)
		if err != nil {
			return refused(v, err)
		}
		return real, "", nil
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		real, err := hostcheck.Program(p, avoid)
		if err != nil {
			return refused(p, err)
		}
		return real, "", nil
	}
	for _, p := range fileServerPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			real, err := hostcheck.Program(p, avoid)
			if err != nil {
				return refused(p, err)
			}
			return real, "", nil
		}
	}
	return "", "no virtio-fs server (virtiofsd) on this host: install one (QEMU's package before 8.0, or the virtiofsd package) for faster workspaces", nil
}

// chooseAccel resolves auto/kvm/tcg with the cached KVM probe.
func (m *Manager) chooseAccel(ctx context.Context, want, qemu string, k bootassets.Kernel, initrd string) (vm.Accel, error) {
	if want == "tcg" {
		return vm.AccelTCG, nil
	}
	ok, reason, err := hostcheck.KVMUsable(ctx, m.Dirs.Cache, qemu, k.Path, initrd)
	if err != nil {
		m.Log.Debug("kvm probe", "err", err)
	}
	if ok {
		return vm.AccelKVM, nil
	}
	if want == "kvm" {
		return "", m.fail(err, "use --accel tcg (slow, emulated) or --accel auto", "--accel kvm: KVM cannot run a guest here: %s", reason)
	}
	m.warnTCG(reason)
	return vm.AccelTCG, nil
}

func (m *Manager) warnTCG(reason string) {
	m.Log.Debug("kvm unusable", "reason", reason)
	// Once per Manager (a command): a new sandbox resolves its boot
	// assets twice (for its snapshot, then for its start).
	if !m.warnedTCG.CompareAndSwap(false, true) {
		return
	}
	m.emit(Event{Kind: Notice, Text: "KVM cannot run guests here; using TCG emulation, which is slow (see `sbx diagnose`)"})
}

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
func (m *Manager) PrepareSnapshot(ctx context.Context, cfg sandbox.Config, tmpl template.Template) (*snapshot.Snapshot, error) {
	n := 0
	for _, w := range cfg.Workspaces {
		if !w.Unshared {
			n++
		}
	}
	if n > snapshot.Shares {
		m.emit(Event{Kind: Notice, Sandbox: cfg.Name, Text: fmt.Sprintf("note: %d workspaces, and snapshot starts have %d share slots: this sandbox boots cold", n, snapshot.Shares)})
		return nil, nil
	}
	boot, qemuVersion, err := m.BootAssets(ctx, cfg.Accel, cfg.CPUs, cfg.UID, nil)
	if err != nil {
		return nil, err
	}
	ref := sandbox.TemplateRef{Name: tmpl.Name, ID: tmpl.ID, Image: tmpl.Image}
	spec := snapshotSpec(boot, qemuVersion, cfg, ref)
	qemuImg, err := m.QEMUImg(ctx)
	if err != nil {
		return nil, err
	}
	save := m.SaveSnapshot
	if save == nil {
		save = supervisor.SaveSnapshot
	}
	snap, err := save(ctx, supervisor.SnapshotJob{Cache: m.Dirs.Cache, QEMUImg: qemuImg, Spec: spec}, m.progressOut())
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		m.emit(Event{Kind: Warning, Sandbox: cfg.Name, Text: fmt.Sprintf("no fast start for template %s: %v; the sandbox boots cold", tmpl.Name, err)})
		return nil, nil
	}
	return snap, nil
}

// restoreFor says whether this start of sb resumes its snapshot: only its
// first start (afterwards its disk has moved on), unless --cold, and only
// while the snapshot still matches what this start would boot.
func (m *Manager) restoreFor(sb *sandbox.Sandbox, boot supervisor.Boot, qemuVersion string, cold bool) (*supervisor.Restore, error) {
	key := sb.Config.Snapshot
	if key == "" {
		return nil, nil
	}
	// The sandbox's disk is an overlay of the snapshot's: without it the
	// sandbox cannot boot at all, cold or not.
	if _, err := os.Stat(snapshot.DiskOf(m.Dirs.Cache, key)); err != nil {
		return nil, m.fail(err, "remove it with `sbx rm "+sb.Config.Name+"` and create it again",
			"sandbox %s cannot start: its disk is based on snapshot %s, which is gone from the cache", sb.Config.Name, key)
	}
	if cold {
		return nil, nil
	}
	if _, err := os.Stat(sb.Path(sandbox.BootedFile)); err == nil {
		return nil, nil
	}
	spec := snapshotSpec(boot, qemuVersion, sb.Config, sb.Config.Template)
	snap, err := snapshot.Lookup(m.Dirs.Cache, key)
	if err != nil {
		m.emit(Event{Kind: Notice, Sandbox: sb.Config.Name, Text: fmt.Sprintf("note: the snapshot sandbox %s was made from is incomplete (%v); booting cold", sb.Config.Name, err)})
		return nil, nil
	}
	if spec.Key() != key {
		m.emit(Event{Kind: Notice, Sandbox: sb.Config.Name, Text: fmt.Sprintf("note: the snapshot sandbox %s was made from no longer matches (%s); booting cold", sb.Config.Name, snapshot.Changed(spec, snap.Meta))})
		return nil, nil
	}
	return &supervisor.Restore{Key: key, State: snap.State, RAM: snap.RAM, Empty: snap.Empty, Console: snap.Console, Spec: snap.Meta.Spec}, nil
}

// fail is a refusal of the host's setup or the sandbox's: Invalid, with
// what to do.
func (m *Manager) fail(cause error, hint, format string, args ...any) *Error {
	return newErr(Invalid, "", cause, hint, format, args...)
}

// progressOut is where long steps (a kernel download) write progress.
func (m *Manager) progressOut() io.Writer {
	if m.Progress == nil {
		return io.Discard
	}
	return m.Progress
}

// GuestIDs are the uid and gid the guest user (and its VMM) take when
// nothing says otherwise: the caller's, or for root the sudo caller's,
// else 1000 when no account has it, else a uid no account has
// (FreeIDs).
func GuestIDs() (int, int) {
	uid, gid := os.Getuid(), os.Getgid()
	if uid != 0 {
		return uid, gid
	}
	u, err1 := strconv.Atoi(os.Getenv("SUDO_UID"))
	g, err2 := strconv.Atoi(os.Getenv("SUDO_GID"))
	if err1 == nil && err2 == nil && u > 0 {
		return u, g
	}
	return FreeIDs("/etc")
}

// GuestIDsFor are the ids of a new sandbox whose primary workspace is
// primary: GuestIDs, but for root without a sudo caller, the
// workspace's owner when that is not root. QEMU runs as them, so an
// account that happens to have uid 1000 (found by the tenth review: an
// unrelated one here) does not get to control root's VMs.
func GuestIDsFor(primary string) (int, int) {
	if os.Getuid() == 0 && os.Getenv("SUDO_UID") == "" {
		if st, err := os.Stat(primary); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
				return int(sys.Uid), int(sys.Gid)
			}
		}
	}
	return GuestIDs()
}

// FreeIDs is 1000:1000 unless an account or group in etc (the host's
// /etc) has that id, else the first id from 60100 that neither has:
// nobody can log in as it, so nobody but root reaches the VMMs that run
// as it.
func FreeIDs(etc string) (int, int) {
	used := func(file string) map[int]bool {
		ids := map[int]bool{}
		b, err := os.ReadFile(filepath.Join(etc, file))
		if err != nil {
			return nil
		}
		for l := range strings.Lines(string(b)) {
			if f := strings.Split(l, ":"); len(f) > 2 {
				if n, err := strconv.Atoi(f[2]); err == nil {
					ids[n] = true
				}
			}
		}
		return ids
	}
	users, groups := used("passwd"), used("group")
	if users == nil {
		return 1000, 1000 // no passwd to read: nothing to clash with
	}
	if !users[1000] && !groups[1000] {
		return 1000, 1000
	}
	for id := 60100; id < 61000; id++ {
		if !users[id] && !groups[id] {
			return id, id
		}
	}
	return vm.Nobody, vm.Nobody
}
