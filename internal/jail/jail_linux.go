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
	"strconv"
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
	// Guarded are the paths among ReadOnly and ReadWrite a guest may
	// have changed (workspaces): each is bound only while it is its own
	// real path, no symbolic link anywhere on the way, opened without
	// following one and mounted from that descriptor onto a target
	// opened the same way inside the jail, so a workspace turned into a
	// link (through another, outer workspace) binds nothing else.
	Guarded []string `json:"guarded,omitempty"`
	// UID and GID the program runs as (with Root); Groups its only
	// supplementary groups (the group of /dev/kvm).
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
	// UserNS, with Root, builds the jail in a user namespace of its own
	// where UID and GID are the only ids, each mapped to itself: the
	// program runs as UID with the capabilities Caps inside that
	// namespace only (they reach no file of another owner), for a file
	// server that must mount and pivot into the folder it serves. Root
	// is not needed: an unprivileged user may map its own ids.
	UserNS bool `json:"userNS,omitempty"`
	// Caps are the capability numbers the program keeps in its user
	// namespace (ambient); only with UserNS.
	Caps []uintptr `json:"caps,omitempty"`
	// Tmpfs are empty writable folders mounted in the jail (a runtime
	// folder the program insists on); with Root.
	Tmpfs []string `json:"tmpfs,omitempty"`
	// FakeSetID makes setresuid and setresgid succeed without effect: a
	// file server that takes on each caller's ids stays the one id the
	// namespace maps, so everything it creates is UID's.
	FakeSetID bool `json:"fakeSetID,omitempty"`
	// KeepFDs is how many of the caller's ExtraFiles (descriptors 3 and
	// on) the program gets; every other inherited descriptor is closed.
	// Without UserNS only.
	KeepFDs int `json:"keepFDs,omitempty"`
	// Stage2 marks the second stage of a UserNS jail (set by the helper).
	Stage2 bool `json:"stage2,omitempty"`
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
	if spec.Root != "" && os.Geteuid() != 0 && !spec.UserNS {
		return nil, errors.New("jail: a jail root needs root")
	}
	if spec.UserNS && spec.Root == "" {
		return nil, errors.New("jail: a user namespace needs a jail root")
	}
	if spec.UserNS && (spec.UID <= 0 || spec.GID <= 0) {
		return nil, fmt.Errorf("jail: refusing to map uid %d gid %d into a user namespace", spec.UID, spec.GID)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("jail: find this program: %w", err)
	}
	var files []*os.File
	path := self
	if spec.UserNS {
		// The program runs as UID, which may not reach this binary (a
		// home only root enters): the helper starts its second stage from
		// the binary this process opened, descriptor 3. ExtraFiles the
		// caller adds come after it.
		f, err := os.Open(self)
		if err != nil {
			return nil, fmt.Errorf("jail: open this program: %w", err)
		}
		files = append(files, f)
		path = "/proc/self/fd/3"
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, HelperArg)
	cmd.Path = path
	cmd.Env = []string{specEnv + "=" + string(b)}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	cmd.ExtraFiles = files
	if spec.Root != "" {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET
	}
	if spec.UserNS && os.Geteuid() != 0 {
		// A user builds the root in a user namespace of its own, mapping
		// only itself, with what that takes.
		userNS(cmd.SysProcAttr, spec, []uintptr{unix.CAP_SYS_ADMIN, unix.CAP_SETPCAP})
	}
	return cmd, nil
}

// userNS makes a process start in a new user namespace where spec's UID
// and GID are the only ids, each mapped to itself, as UID with caps
// (ambient, so they survive its exec).
func userNS(a *syscall.SysProcAttr, spec Spec, caps []uintptr) {
	a.Cloneflags |= syscall.CLONE_NEWUSER
	a.UidMappings = []syscall.SysProcIDMap{{ContainerID: spec.UID, HostID: spec.UID, Size: 1}}
	a.GidMappings = []syscall.SysProcIDMap{{ContainerID: spec.GID, HostID: spec.GID, Size: 1}}
	a.GidMappingsEnableSetgroups = false
	a.Credential = &syscall.Credential{Uid: uint32(spec.UID), Gid: uint32(spec.GID), NoSetGroups: true}
	a.AmbientCaps = caps
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
	if spec.Stage2 {
		return stage2(spec)
	}
	// Nothing the starter left open without close-on-exec reaches the
	// program (a folder open in the shell that ran sbx would show the
	// host through /proc/self/fd): only the caller's ExtraFiles, and with
	// UserNS this binary (descriptor 3), which the second stage gets.
	keep := 3 + spec.KeepFDs
	var self *os.File
	if spec.UserNS {
		fd, err := unix.FcntlInt(3, unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			fmt.Fprintf(os.Stderr, "sbx jail: %v\n", err)
			return 125
		}
		self, keep = os.NewFile(uintptr(fd), "sbx"), 3
	}
	_ = unix.CloseRange(uint(keep), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err := enter(spec); err != nil {
		fmt.Fprintf(os.Stderr, "sbx jail: %v\n", err)
		return 125
	}
	if spec.UserNS {
		return stage1(spec, self)
	}
	err := unix.Exec(spec.Argv[0], spec.Argv, spec.Env)
	fmt.Fprintf(os.Stderr, "sbx jail: exec %s: %v\n", spec.Argv[0], err)
	return 127
}

// stage1 runs a UserNS jail's program once its root is built: in a user
// and mount namespace of its own again, a child of this one, so every
// mount of the root is copied into it locked (MNT_LOCKED and locked
// flags): with the capabilities it holds there the program can mount,
// bind and pivot, but neither remount a read-only bind read-write nor
// unmount one to see beneath. The helper stays as the jail's first
// process and exits as the program did.
func stage1(spec Spec, self *os.File) int {
	spec.Stage2 = true
	b, err := json.Marshal(spec)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sbx jail: %v\n", err)
		return 125
	}
	cmd := exec.Command("/proc/self/fd/3", HelperArg)
	cmd.Env = []string{specEnv + "=" + string(b)}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{self}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	// CAP_SETPCAP cuts the bounding set (keepCaps), then goes unless listed.
	userNS(cmd.SysProcAttr, spec, append(slices.Clone(spec.Caps), unix.CAP_SETPCAP))
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "sbx jail: start %s: %v\n", spec.Argv[0], err)
		return 127
	}
	self.Close()
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if err != nil && cmd.ProcessState == nil {
		return 125
	}
	return cmd.ProcessState.ExitCode()
}

// stage2 is the program's side of a UserNS jail: already UID in its own
// user namespace with Caps; it cuts the rest, sets no_new_privs and the
// filter, and execs the program.
func stage2(spec Spec) int {
	unix.CloseOnExec(3) // this binary
	err := keepCaps(spec.Caps)
	if err == nil {
		err = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
	}
	if err == nil {
		err = unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
	}
	if err == nil {
		err = installFilter(spec.FakeSetID)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sbx jail: %v\n", err)
		return 125
	}
	err = unix.Exec(spec.Argv[0], spec.Argv, spec.Env)
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
		// A UserNS jail drops to UID in its second stage.
		if !spec.UserNS {
			if err := dropIDs(spec); err != nil {
				return err
			}
		}
	}
	// Credentials changed: the parent-death signal was cleared.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("set parent-death signal: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	if spec.UserNS {
		// The first stage runs nothing but the second, which installs the
		// filter itself (its FakeSetID would undo the second stage's drop
		// to UID).
		return nil
	}
	return installFilter(spec.FakeSetID)
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
		if err := bind(root, d, true, unix.MS_NOSUID|unix.MS_NODEV, false); err != nil {
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
		if err := bind(root, d, false, unix.MS_NOSUID|unix.MS_NOEXEC, false); err != nil {
			return err
		}
	}
	for _, d := range spec.Tmpfs {
		t := filepath.Join(root, filepath.Clean(d))
		if err := os.MkdirAll(t, 0o755); err != nil {
			return err
		}
		// The program's to write: it runs as UID.
		opts := fmt.Sprintf("mode=0755,size=1m,uid=%d,gid=%d", spec.UID, spec.GID)
		if err := unix.Mount("tmpfs", t, "tmpfs", safeFlags|unix.MS_NOEXEC, opts); err != nil {
			return fmt.Errorf("mount %s: %w", d, err)
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
		if err := bind(root, e.path, e.ro, e.flags, slices.Contains(spec.Guarded, e.path)); err != nil {
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
func bind(root, p string, ro bool, flags uintptr, guarded bool) error {
	if guarded {
		return bindGuarded(root, p, ro, flags)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	target, err := mountPoint(root, p, fi.IsDir())
	if err != nil {
		return err
	}
	if err := unix.Mount(p, target, "", bindFlags, ""); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	if ro {
		flags |= unix.MS_RDONLY
	}
	// Keep the flags the host's mount has: in a user namespace they are
	// locked, and a remount that would clear one (noatime, say) fails.
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err == nil {
		for _, f := range [][2]uintptr{
			{unix.ST_RDONLY, unix.MS_RDONLY}, {unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV},
			{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME},
			{unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
		} {
			if uintptr(st.Flags)&f[0] != 0 {
				flags |= f[1]
			}
		}
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|flags, ""); err != nil {
		return fmt.Errorf("bind %s: set flags: %w", p, err)
	}
	return nil
}

// mountPoint makes the mount point of host path p under root (a folder
// or an empty file) and its parents.
func mountPoint(root, p string, dir bool) (string, error) {
	target := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return "", fmt.Errorf("bind %s: %w", p, err)
	}
	if dir {
		if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("bind %s: %w", p, err)
		}
	} else {
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return "", fmt.Errorf("bind %s: %w", p, err)
		}
		f.Close()
	}
	return target, nil
}

// bindGuarded binds a guarded path (Spec.Guarded) without following a
// link on either side: a detached copy of the mount opened from the
// source's descriptor gets its flags, then is attached onto the mount
// point's descriptor.
func bindGuarded(root, p string, ro bool, flags uintptr) error {
	sfd, err := OpenReal(p)
	if err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	tree, err := unix.OpenTree(sfd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|unix.AT_EMPTY_PATH)
	unix.Close(sfd)
	if err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	defer unix.Close(tree)
	var st unix.Stat_t
	if err := unix.Fstat(tree, &st); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	var attr uint64
	for _, f := range [][2]uint64{
		{unix.MS_RDONLY, unix.MOUNT_ATTR_RDONLY}, {unix.MS_NOSUID, unix.MOUNT_ATTR_NOSUID},
		{unix.MS_NODEV, unix.MOUNT_ATTR_NODEV}, {unix.MS_NOEXEC, unix.MOUNT_ATTR_NOEXEC},
	} {
		if uint64(flags)&f[0] != 0 || (ro && f[0] == unix.MS_RDONLY) {
			attr |= f[1]
		}
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: attr}); err != nil {
		return fmt.Errorf("bind %s: set flags: %w", p, err)
	}
	// The mount point is reached through binds made before (an outer
	// workspace), where the guest may have put a link: made and opened
	// one component at a time, never through a link.
	tfd, err := guardedMountPoint(root, p, st.Mode&unix.S_IFMT == unix.S_IFDIR)
	if err != nil {
		return fmt.Errorf("bind %s: mount point: %w", p, err)
	}
	defer unix.Close(tfd)
	if err := unix.MoveMount(tree, "", tfd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	return nil
}

// guardedMountPoint makes and opens (O_PATH) the mount point of p under
// root, a folder or an empty file, each component made with mkdirat and
// opened without following a link.
func guardedMountPoint(root, p string, dir bool) (int, error) {
	fd, err := OpenReal(root)
	if err != nil {
		return -1, err
	}
	parts := strings.Split(strings.Trim(filepath.Clean(p), "/"), "/")
	for i, c := range parts {
		last := i == len(parts)-1
		if last && !dir {
			f, err := unix.Openat(fd, c, unix.O_CREAT|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o644)
			if err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("%s: %w", c, err)
			}
			unix.Close(f)
			nfd, err := unix.Openat(fd, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			unix.Close(fd)
			if err != nil {
				return -1, fmt.Errorf("%s: %w", c, err)
			}
			return nfd, nil
		}
		if err := unix.Mkdirat(fd, c, 0o755); err != nil && err != unix.EEXIST {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %w", c, err)
		}
		nfd, err := unix.Openat(fd, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("%s is not a folder (a symbolic link?): %w", c, err)
		}
		fd = nfd
	}
	return fd, nil
}

// OpenReal opens path (O_PATH) only if it is its own real path: no
// component, the last included, is a symbolic link. The caller closes
// the descriptor.
func OpenReal(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		unix.Close(fd)
		return -1, fmt.Errorf("%s is a symbolic link; not followed", path)
	}
	if got, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err != nil || got != filepath.Clean(path) {
		unix.Close(fd)
		return -1, fmt.Errorf("%s leads to %q through a symbolic link; not followed", path, got)
	}
	return fd, nil
}

// keepCaps leaves the jail's user namespace with only caps: the bounding
// set and the ambient, inheritable, permitted and effective sets are cut
// to them (CAP_SYS_ADMIN, which built the root, goes unless listed).
func keepCaps(caps []uintptr) error {
	keep := map[uintptr]bool{}
	for _, c := range caps {
		keep[c] = true
	}
	var data [2]unix.CapUserData
	for c := uintptr(0); c <= unix.CAP_LAST_CAP; c++ {
		if keep[c] {
			data[c/32].Permitted |= 1 << (c % 32)
			continue
		}
		_ = unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_LOWER, c, 0, 0)
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	data[0].Effective, data[1].Effective = data[0].Permitted, data[1].Permitted
	data[0].Inheritable, data[1].Inheritable = data[0].Permitted, data[1].Permitted
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
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
