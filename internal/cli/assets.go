package cli

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/sbx-dev/sbx/internal/bootassets"
	"github.com/sbx-dev/sbx/internal/hostcheck"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/resolve"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/vm"
)

// kernelOptions are the user's kernel choices from the environment.
func kernelOptions(e *env) bootassets.Options {
	return bootassets.Options{
		KernelPath: paths.Getenv("SBX_KERNEL"),
		ModulesDir: paths.Getenv("SBX_KERNEL_MODULES"),
		Logger:     e.log,
	}
}

// agentBinary finds sbx-agent: SBX_AGENT, else next to the sbx binary.
func agentBinary() (string, error) {
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
		return "", userErr(err, "build it with `make build` (it goes next to sbx), or set SBX_AGENT", "the guest agent binary sbx-agent is missing beside %s", exe)
	}
	return p, nil
}

func (e *env) qemu(ctx context.Context, shared []string) (string, string, error) {
	avoid := e.allWorkspaces(shared)
	if p := paths.Getenv("SBX_QEMU"); p != "" {
		real, err := hostcheck.Program(p, avoid)
		if err != nil {
			return "", "", userErr(nil, programHint, "SBX_QEMU refused: %v", err)
		}
		return real, "", nil
	}
	path, version, err := hostcheck.QEMU(ctx, avoid)
	if errors.Is(err, hostcheck.ErrUntrusted) {
		return "", "", userErr(nil, programHint, "the QEMU on PATH is refused: %v", err)
	}
	if err != nil {
		return "", "", userErr(err, "install it: apt-get install qemu-system-x86 (or run `make deps`)", "QEMU is not installed")
	}
	return path, version, nil
}

// programHint is the hint of a refused QEMU, qemu-img or virtiofsd.
const programHint = "use the system's copy (apt-get install qemu-system-x86 qemu-utils), or one in a folder only you (as root: only root) can write, outside every workspace; fix PATH if a workspace's folder is on it"

func (e *env) qemuImg(ctx context.Context) (string, error) {
	p, err := hostcheck.QEMUImg(ctx, e.allWorkspaces(nil))
	if errors.Is(err, hostcheck.ErrUntrusted) {
		return "", userErr(nil, programHint, "the qemu-img on PATH is refused: %v", err)
	}
	if err != nil {
		return "", userErr(err, "install it: apt-get install qemu-utils (or run `make deps`)", "qemu-img is not installed")
	}
	return p, nil
}

// allWorkspaces are the workspaces of every sandbox in the store, and
// extra: where a guest can write as the workspace owner, so where no
// program sbx runs may lie.
func (e *env) allWorkspaces(extra []string) []string {
	out := append([]string(nil), extra...)
	all, _ := e.store.List()
	for _, sb := range all {
		for _, w := range sb.Config.Workspaces {
			out = append(out, w.Path)
		}
	}
	return out
}

// bootSpec resolves what a start of sb needs: QEMU, kernel, initramfs,
// the accelerator, and whether it resumes sb's snapshot.
func (e *env) bootSpec(ctx context.Context, sb *sandbox.Sandbox) (supervisor.Boot, error) {
	if _, err := os.Stat(sb.Config.Template.Image); err != nil {
		return supervisor.Boot{}, userErr(err, "remove the sandbox with `sbx rm "+sb.Config.Name+"` and create it again", "the template image of sandbox %s is missing", sb.Config.Name)
	}
	var shared []string
	for _, w := range sb.Config.Workspaces {
		shared = append(shared, w.Path)
	}
	b, qemuVersion, err := e.bootAssets(ctx, sb.Config.Accel, sb.Config.CPUs, shared)
	if err != nil {
		return b, err
	}
	b.MAC = sb.Config.MAC
	if b.Restore, err = e.restoreFor(sb, b, qemuVersion); err != nil {
		return b, err
	}
	return b, nil
}

// bootAssets resolves the sandbox-independent part of a start: QEMU (and
// its version), kernel, initramfs, accelerator (want: auto, kvm, tcg), the
// CPU count (0: the accelerator's default), TSC frequency, folders.
// shared are the folders the guest can write, where no hosts override
// may lie.
func (e *env) bootAssets(ctx context.Context, want string, cpus int, shared []string) (supervisor.Boot, string, error) {
	var b supervisor.Boot
	q, qemuVersion, err := e.qemu(ctx, shared)
	if err != nil {
		return b, "", err
	}
	k, err := kernelOptions(e).EnsureKernel(ctx, e.dirs.Cache, e.stderr)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return b, "", err
		}
		return b, "", userErr(err, "see the message above; `sbx diagnose` checks the host", "cannot prepare the guest kernel")
	}
	agent, err := agentBinary()
	if err != nil {
		return b, "", err
	}
	initrd, err := bootassets.EnsureInitramfs(ctx, e.dirs.Cache, k, agent)
	if err != nil {
		return b, "", userErr(err, "", "cannot build the initramfs")
	}
	accel, err := e.chooseAccel(ctx, want, q, k, initrd)
	if err != nil {
		return b, "", err
	}
	tsc, err := hostcheck.TSCkHz()
	if err != nil && accel == vm.AccelTCG {
		e.log.Warn("cannot read the host TSC frequency; the guest clock may drift", "err", err)
	}
	hostsFile := paths.Getenv("SBX_HOSTS_FILE")
	if hostsFile != "" {
		uid, _ := guestIDs()
		real, err := resolve.CheckHostsFile(hostsFile, shared, os.Getuid(), uid)
		if err != nil {
			return b, "", userErr(nil, "point SBX_HOSTS_FILE at a hosts-format file only you can write, outside every workspace, or unset it", "SBX_HOSTS_FILE refused: %v", err)
		}
		hostsFile = real
	}
	fileServer, noFileServer, err := lookupFileServer(e.allWorkspaces(shared))
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
			return b, "", userErr(nil, "set it to a whole number from 1 to 1048576, or unset it", "%s=%q is not a valid limit", k.env, v)
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
		ConfigDir: e.dirs.Config, CacheDir: e.dirs.Cache, HostsFile: hostsFile, Limits: lim,
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
func lookupFileServer(avoid []string) (path, why string, err error) {
	refused := func(p string, err error) (string, string, error) {
		return "", "", userErr(nil, programHint+"; or SBX_VIRTIOFSD=none for 9p", "the virtio-fs server %s is refused: %v", p, err)
	}
	switch v := paths.Getenv("SBX_VIRTIOFSD"); v {
	case "none":
		return "", "SBX_VIRTIOFSD=none", nil
	case "":
	default:
		fi, err := os.Stat(v)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 || !filepath.IsAbs(v) {
			return "", "", userErr(nil, "set it to the absolute path of a virtiofsd, to none for 9p shares, or unset it", "SBX_VIRTIOFSD=%q is not an executable file", v)
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
func (e *env) chooseAccel(ctx context.Context, want, qemu string, k bootassets.Kernel, initrd string) (vm.Accel, error) {
	if want == "tcg" {
		return vm.AccelTCG, nil
	}
	ok, reason, err := hostcheck.KVMUsable(ctx, e.dirs.Cache, qemu, k.Path, initrd)
	if err != nil {
		e.log.Debug("kvm probe", "err", err)
	}
	if ok {
		return vm.AccelKVM, nil
	}
	if want == "kvm" {
		return "", userErr(err, "use --accel tcg (slow, emulated) or --accel auto", "--accel kvm: KVM cannot run a guest here: %s", reason)
	}
	e.warnTCG(reason)
	return vm.AccelTCG, nil
}

func (e *env) warnTCG(reason string) {
	e.log.Debug("kvm unusable", "reason", reason)
	// Once per command: a new sandbox resolves its boot assets twice (for
	// its snapshot, then for its start).
	if e.warnedTCG {
		return
	}
	e.warnedTCG = true
	e.printf(e.stderr, "sbx: KVM cannot run guests here; using TCG emulation, which is slow (see `sbx diagnose`)\n")
}
