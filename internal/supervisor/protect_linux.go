package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// protectCloneflags are the namespace flags Launch gives a supervisor whose
// sandbox protects paths: its own mount namespace, in which the protecting
// mounts exist for it and for QEMU only.
const protectCloneflags = unix.CLONE_NEWNS

// checkOwnMountNS fails unless this process runs in another mount
// namespace than its parent (the command that launched it), so protecting
// mounts can never land in the host's namespace.
func checkOwnMountNS() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("read own mount namespace: %w", err)
	}
	parent, err := os.Readlink("/proc/" + strconv.Itoa(os.Getppid()) + "/ns/mnt")
	if err != nil {
		return fmt.Errorf("read the parent's mount namespace: %w", err)
	}
	if self == parent {
		return errors.New("the supervisor shares its parent's mount namespace; start sandboxes with protected paths through sbx run or sbx create")
	}
	return nil
}

// applyProtect makes the mounts of steps in this process's mount namespace
// (see checkOwnMountNS), after making every mount in it a slave of the
// host's, so nothing done here propagates back to the host while host
// unmounts still reach it. Each read-only mount is checked afterwards.
func applyProtect(steps []mountStep) error {
	if len(steps) == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return ErrProtectNeedsRoot
	}
	if err := checkOwnMountNS(); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / a slave mount: %w", err)
	}
	// And shared within this namespace: the VMM's jail (a namespace made
	// from this one, its mounts slaves of these) then receives every
	// protecting mount, those the watcher makes again later included.
	// Nothing propagates back to the host: these mounts are its slaves.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make / a shared mount in the supervisor's namespace: %w", err)
	}
	for _, s := range steps {
		if err := bindStep(s); err != nil {
			return err
		}
	}
	if lost, err := lostSteps(steps); err != nil || len(lost) > 0 {
		return fmt.Errorf("protecting mounts missing right after they were made (%v): %v", lost, err)
	}
	return nil
}

// fdPath names an open descriptor for mount(2), which follows the magic
// link to the very file the descriptor holds.
func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// openStep opens s.Path without following a symlink at its end, and fails
// if the path now leads through a symlink elsewhere or is one.
func openStep(s mountStep) (int, error) {
	fd, err := unix.Open(s.Path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", s.Path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("stat %s: %w", s.Path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		unix.Close(fd)
		return -1, fmt.Errorf("%s is now a symlink; not protecting where it leads", s.Path)
	}
	if got, err := os.Readlink(fdPath(fd)); err != nil || got != s.Path {
		unix.Close(fd)
		return -1, fmt.Errorf("%s now leads to %q through a symlink (%v); not protecting it there", s.Path, got, err)
	}
	return fd, nil
}

// bindStep bind-mounts s.Path onto itself, read-only if asked. Both mounts
// go through descriptors opened without following symlinks, so a path
// swapped for a symlink meanwhile (by the guest, when the watcher makes a
// step again while the VM runs) is refused rather than followed.
func bindStep(s mountStep) error {
	fd, err := openStep(s)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var under unix.Stat_t
	if err := unix.Fstat(fd, &under); err != nil {
		return fmt.Errorf("stat %s: %w", s.Path, err)
	}
	// With the new mount API the bind is made read-only before it is
	// attached, so every namespace it propagates to (the VMM's jail)
	// gets it read-only too: a remount's flags never propagate.
	if done, err := bindAttached(fd, s); done || err != nil {
		return err
	}
	if err := unix.Mount(fdPath(fd), fdPath(fd), "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", s.Path, err)
	}
	if !s.ReadOnly {
		return nil
	}
	// The remount must reach the new bind, not the mount under it (that
	// would make the whole file system read-only): open the path again and
	// check it is a mount root holding the same file.
	top, err := openStep(s)
	if err != nil {
		return err
	}
	defer unix.Close(top)
	var sx unix.Statx_t
	if err := unix.Statx(top, "", unix.AT_EMPTY_PATH, unix.STATX_INO, &sx); err != nil {
		return fmt.Errorf("statx %s: %w", s.Path, err)
	}
	if sx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return errors.New("protected paths need Linux 5.8 or later (statx mount-root attribute)")
	}
	if sx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 || sx.Ino != under.Ino || unix.Mkdev(sx.Dev_major, sx.Dev_minor) != under.Dev {
		return fmt.Errorf("%s changed while it was being protected", s.Path)
	}
	// A bind remount replaces the mount's flags: keep nosuid, nodev,
	// noexec and the atime flags it inherited.
	var st unix.Statfs_t
	if err := unix.Fstatfs(top, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", s.Path, err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY)
	for _, f := range [][2]int64{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if st.Flags&f[0] != 0 {
			flags |= uintptr(f[1])
		}
	}
	if err := unix.Mount("", fdPath(top), "", flags, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", s.Path, err)
	}
	if err := unix.Fstatfs(top, &st); err != nil || st.Flags&unix.ST_RDONLY == 0 {
		return fmt.Errorf("%s is not read-only after the remount (%v)", s.Path, err)
	}
	return nil
}

// bindAttached binds the file open at fd onto itself with open_tree,
// mount_setattr and move_mount (Linux 5.12): the clone gets its flags
// while detached. done is false when the kernel lacks these calls.
func bindAttached(fd int, s mountStep) (done bool, err error) {
	tree, err := unix.OpenTree(fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOSYS) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("bind %s: %w", s.Path, err)
	}
	defer unix.Close(tree)
	if s.ReadOnly {
		err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
		if errors.Is(err, unix.ENOSYS) {
			return false, nil
		}
		if err != nil {
			return true, fmt.Errorf("make %s read-only: %w", s.Path, err)
		}
	}
	if err := unix.MoveMount(tree, "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return true, fmt.Errorf("bind %s: %w", s.Path, err)
	}
	if !s.ReadOnly {
		return true, nil
	}
	top, err := openStep(s)
	if err != nil {
		return true, err
	}
	defer unix.Close(top)
	var st unix.Statfs_t
	if err := unix.Fstatfs(top, &st); err != nil || st.Flags&unix.ST_RDONLY == 0 {
		return true, fmt.Errorf("%s is not read-only after the bind (%v)", s.Path, err)
	}
	return true, nil
}

// stepHolds reports whether s.Path is, in this namespace, still the root
// of a mount (read-only if s asks for it). Only the path as it resolves
// now counts: a mount hidden under another one does not.
func stepHolds(s mountStep) (bool, error) {
	var sx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, s.Path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO, &sx)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("statx %s: %w", s.Path, err)
	}
	if sx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, errors.New("protected paths need Linux 5.8 or later (statx mount-root attribute)")
	}
	if sx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 || sx.Mode&unix.S_IFMT == unix.S_IFLNK {
		return false, nil
	}
	if !s.ReadOnly {
		return true, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.Path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", s.Path, err)
	}
	return st.Flags&unix.ST_RDONLY != 0, nil
}

// lostSteps returns the steps whose mount is gone.
func lostSteps(steps []mountStep) ([]mountStep, error) {
	var lost []mountStep
	for _, s := range steps {
		ok, err := stepHolds(s)
		if err != nil {
			return nil, err
		}
		if !ok {
			lost = append(lost, s)
		}
	}
	return lost, nil
}

// protectEvent is what the watcher saw: Path's mount went away, and was
// made again (Err nil) or could not be (Err says why; protection is then
// lost and the VM must stop).
type protectEvent struct {
	Path string
	Err  error
}

// watchProtect keeps the mounts of steps (made by applyProtect) in place
// until ctx ends. Since Linux 3.18 a rename or unlink on the host of a
// path that is a mount point in this namespace detaches the mount here:
// `git config` on the host (which renames config.lock over .git/config)
// would take the protection of .git/config away. The watcher wakes on each
// change of this namespace's mount table (POLLPRI on /proc/self/mountinfo)
// and at least every second, and makes every lost mount again, parents
// first, on whatever the host put at the path. It calls report for each
// lost path; after a report with an error (the path is gone, became a
// symlink, or the mount failed) it stops watching, and the caller must
// stop the VM.
func watchProtect(ctx context.Context, steps []mountStep, report func(protectEvent)) error {
	if len(steps) == 0 {
		return nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("watch the mount table: %w", err)
	}
	go func() {
		defer f.Close()
		fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}}
		for {
			_, _ = unix.Poll(fds, 1000) // EINTR or a timeout: check anyway
			if ctx.Err() != nil {
				return
			}
			ev, failed := reprotect(steps)
			for _, e := range ev {
				report(e)
			}
			if failed {
				return
			}
		}
	}()
	return nil
}

// reprotect makes the lost mounts of steps again. failed reports that
// protection could not be restored; the last event then carries the error.
// Making a mount can fail for a moment while the host's rename completes
// (the replaced file is still in the cache, and cannot take a mount:
// ENOENT), so it is tried for a little while before giving up. A parent
// made again over a child that still held would hide the child: the whole
// plan is checked again after each round.
func reprotect(steps []mountStep) (events []protectEvent, failed bool) {
	done := map[string]bool{}
	var last protectEvent
	for try := 0; try < 50; try++ {
		if try > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		lost, err := lostSteps(steps)
		if err != nil {
			return append(events, protectEvent{Err: err}), true
		}
		if len(lost) == 0 {
			return events, false
		}
		for _, s := range lost {
			if err := bindStep(s); err != nil {
				last = protectEvent{Path: s.Path, Err: err}
				break
			}
			if !done[s.Path] {
				done[s.Path] = true
				events = append(events, protectEvent{Path: s.Path})
			}
		}
	}
	if last.Err == nil {
		last.Err = errors.New("still not protected after its mounts were made again")
	}
	return append(events, last), true
}
