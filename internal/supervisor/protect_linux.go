package supervisor

import (
	"errors"
	"fmt"
	"os"
	"strconv"

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
	for _, s := range steps {
		if err := unix.Mount(s.Path, s.Path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", s.Path, err)
		}
		if !s.ReadOnly {
			continue
		}
		// A bind remount replaces the mount's flags: keep nosuid, nodev,
		// noexec and the atime flags it inherited.
		var st unix.Statfs_t
		if err := unix.Statfs(s.Path, &st); err != nil {
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
		if err := unix.Mount("", s.Path, "", flags, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", s.Path, err)
		}
		if err := unix.Statfs(s.Path, &st); err != nil || st.Flags&unix.ST_RDONLY == 0 {
			return fmt.Errorf("%s is not read-only after the remount (%v)", s.Path, err)
		}
	}
	return nil
}
