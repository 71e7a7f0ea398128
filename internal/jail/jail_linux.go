// Package jail runs a helper program (the VMM) with as little of the host
// as it needs, after Firecracker's jailer: when started by root, in its own
// mount, PID, IPC and network namespaces, on an empty root that holds only
// the system's program folders (read-only) and the files it was given, as
// an unprivileged uid with no supplementary groups; whoever starts it, with
// no_new_privs and a seccomp filter that refuses to make set-uid or set-gid
// files, so nothing it writes into a shared folder becomes a set-id
// program on the host.
//
// The jail is a re-exec of the running binary: Command returns an
// exec.Cmd that runs os.Args[0] with the marker argument HelperArg, and
// the binary's main calls Main first thing when IsHelper reports it is
// the helper. Main sets the jail up and execs the program, so the
// process's pid is the program's.
package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// HelperArg is argv[1] of the jail helper.
const HelperArg = "__sbx-jail"

// specEnv carries the Spec to the helper.
const specEnv = "SBX_JAIL_SPEC"

// Spec is what runs in the jail and what it may see.
type Spec struct {
	// Argv is the program and its arguments; Argv[0] is an absolute path.
	Argv []string `json:"argv"`
	// Env is the program's environment.
	Env []string `json:"env"`
	// Root, when set, is an empty folder the jail's root is mounted on
	// (needs root): the program then sees only the system folders
	// (SystemDirs, read-only), /dev with Devices, a private /tmp and
	// /proc, and the paths below. Without it only the filter applies.
	Root string `json:"root,omitempty"`
	// ReadOnly and ReadWrite are host files and folders bound into the
	// jail at the same path, never executable; Exec are bound read-only
	// and executable (a program outside SystemDirs).
	ReadOnly  []string `json:"readOnly,omitempty"`
	Exec      []string `json:"exec,omitempty"`
	ReadWrite []string `json:"readWrite,omitempty"`
	// Devices are device nodes bound into /dev (/dev/kvm).
	Devices []string `json:"devices,omitempty"`
	// UID and GID the program runs as (with Root); Groups its only
	// supplementary groups (the group of /dev/kvm).
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
}

// SystemDirs are bound read-only into every jail with a Root: what a
// dynamically linked program and QEMU's firmware need.
var SystemDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"}

// baseDevices are bound into every jail's /dev.
var baseDevices = []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}

// IsHelper reports whether args are those of the jail helper.
func IsHelper(args []string) bool { return len(args) > 1 && args[1] == HelperArg }

// Command returns the command that runs spec.Argv jailed. The caller sets
// Stdin/Stdout/Stderr, ExtraFiles and SysProcAttr fields other than
// Cloneflags as for the program itself.
func Command(spec Spec) (*exec.Cmd, error) {
	if len(spec.Argv) == 0 || !filepath.IsAbs(spec.Argv[0]) {
		return nil, fmt.Errorf("jail: the program must be an absolute path, got %q", spec.Argv)
	}
	if spec.Root != "" && os.Geteuid() != 0 {
		return nil, errors.New("jail: a jail root needs root")
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("jail: find this program: %w", err)
	}
	cmd := exec.Command(self, HelperArg)
	cmd.Env = []string{specEnv + "=" + string(b)}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if spec.Root != "" {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET
	}
	return cmd, nil
}

// Main is the helper: it builds the jail described by $SBX_JAIL_SPEC and
// execs the program. It returns only on failure, with the exit status to
// use after the message was printed.
func Main() int {
	// no_new_privs, the filter and the parent-death signal belong to this
	// thread, the one that execs.
	runtime.LockOSThread()
	var spec Spec
	if err := json.Unmarshal([]byte(os.Getenv(specEnv)), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "sbx jail: bad spec: %v\n", err)
		return 125
	}
	if err := enter(spec); err != nil {
		fmt.Fprintf(os.Stderr, "sbx jail: %v\n", err)
		return 125
	}
	err := unix.Exec(spec.Argv[0], spec.Argv, spec.Env)
	fmt.Fprintf(os.Stderr, "sbx jail: exec %s: %v\n", spec.Argv[0], err)
	return 127
}

// enter turns this process into the jail: mounts and ids (with Root), then
// no_new_privs and the filter.
func enter(spec Spec) error {
	if spec.Root != "" {
		if err := buildRoot(spec); err != nil {
			return err
		}
		if err := dropIDs(spec); err != nil {
			return err
		}
	}
	// Credentials changed: the parent-death signal was cleared.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("set parent-death signal: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return installFilter()
}

const (
	bindFlags = unix.MS_BIND | unix.MS_REC
	// Every bound path: no set-id programs, no device nodes.
	safeFlags = unix.MS_NOSUID | unix.MS_NODEV
)

// buildRoot mounts the jail's root on spec.Root and pivots into it.
func buildRoot(spec Spec) error {
	root := spec.Root
	// Nothing mounted here may reach the parent's mount table, but what
	// the parent mounts later (a protecting mount made again) reaches the
	// jail's binds: slaves, not private.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make mounts slaves: %w", err)
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount the jail root: %w", err)
	}
	for _, d := range SystemDirs {
		fi, err := os.Lstat(d)
		if err != nil {
			continue
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			// /bin -> usr/bin on merged-/usr systems: the same link.
			target, err := os.Readlink(d)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, filepath.Join(root, d)); err != nil {
				return err
			}
			continue
		}
		if err := bind(root, d, true, unix.MS_NOSUID|unix.MS_NODEV); err != nil {
			return err
		}
	}
	// /dev: a tmpfs with the few nodes a VMM uses.
	dev := filepath.Join(root, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, d := range append(slices.Clone(baseDevices), spec.Devices...) {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		if err := bind(root, d, false, unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "proc"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("tmpfs", filepath.Join(root, "tmp"), "tmpfs", safeFlags|unix.MS_NOEXEC, "mode=1777,size=16m"); err != nil {
		return fmt.Errorf("mount /tmp: %w", err)
	}
	// The jail's own PID namespace: only the program itself shows.
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", safeFlags|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	type entry struct {
		path  string
		ro    bool
		flags uintptr
	}
	var entries []entry
	for _, p := range spec.ReadOnly {
		entries = append(entries, entry{filepath.Clean(p), true, safeFlags | unix.MS_NOEXEC})
	}
	for _, p := range spec.Exec {
		entries = append(entries, entry{filepath.Clean(p), true, safeFlags})
	}
	for _, p := range spec.ReadWrite {
		entries = append(entries, entry{filepath.Clean(p), false, safeFlags | unix.MS_NOEXEC})
	}
	// Parents before children, so a file inside a bound folder is bound
	// over it, not hidden by it.
	slices.SortStableFunc(entries, func(a, b entry) int {
		return strings.Count(a.path, "/") - strings.Count(b.path, "/")
	})
	for _, e := range entries {
		if err := bind(root, e.path, e.ro, e.flags); err != nil {
			return err
		}
	}
	old := filepath.Join(root, ".old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return err
	}
	// The jail's own root folder is read-only too.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|safeFlags, ""); err != nil {
		return fmt.Errorf("make the jail root read-only: %w", err)
	}
	return nil
}

// bind mounts host path p at the same path under root, creating the
// mount point (a folder or an empty file) and its parents, then sets
// flags (and read-only).
func bind(root, p string, ro bool, flags uintptr) error {
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	target := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	if fi.IsDir() {
		if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("bind %s: %w", p, err)
		}
	} else {
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("bind %s: %w", p, err)
		}
		f.Close()
	}
	if err := unix.Mount(p, target, "", bindFlags, ""); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	if ro {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|flags, ""); err != nil {
		return fmt.Errorf("bind %s: set flags: %w", p, err)
	}
	return nil
}

// dropIDs leaves root for good: groups, gid, then uid.
func dropIDs(spec Spec) error {
	if spec.UID <= 0 || spec.GID <= 0 {
		return fmt.Errorf("refusing to run the program as uid %d gid %d: the jail never keeps root", spec.UID, spec.GID)
	}
	groups := spec.Groups
	if groups == nil {
		groups = []int{}
	}
	// syscall's, not unix's: these change every thread of the process.
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := unix.Setresgid(spec.GID, spec.GID, spec.GID); err != nil {
		return fmt.Errorf("setgid %d: %w", spec.GID, err)
	}
	if err := unix.Setresuid(spec.UID, spec.UID, spec.UID); err != nil {
		return fmt.Errorf("setuid %d: %w", spec.UID, err)
	}
	if unix.Setuid(0) == nil {
		return errors.New("could regain root after dropping it")
	}
	return nil
}
