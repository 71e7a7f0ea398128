package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The agent runs as root and writes into directories the agent user owns
// (its home). That user may have left symlinks or hard links there in an
// earlier boot, pointing at files only root may touch. These helpers
// resolve such paths one component at a time with O_NOFOLLOW, refuse
// symlinks and multiply linked files, change ownership through the open
// descriptor and replace files by a rename inside the already opened
// directory, so nothing outside it is ever written or chowned.

// errSymlink is returned for a path component that is a symlink.
var errSymlink = errors.New("is a symlink, left alone")

// openDirNoFollow opens the directory base/rel, refusing a symlink (or
// anything but a directory) in any component of rel; base itself is
// trusted. The descriptor is the caller's to close.
func openDirNoFollow(base, rel string) (*os.File, error) {
	fd, err := unix.Open(base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: base, Err: err}
	}
	cur := base
	for c := range strings.SplitSeq(filepath.Clean("/"+rel), "/") {
		if c == "" {
			continue
		}
		cur = filepath.Join(cur, c)
		next, err := openatNoFollow(fd, c, unix.O_RDONLY|unix.O_DIRECTORY)
		unix.Close(fd)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: cur, Err: err}
		}
		fd = next
	}
	return os.NewFile(uintptr(fd), cur), nil
}

// openDirAt opens the directory name in dir, refusing a symlink.
func openDirAt(dir *os.File, name string) (*os.File, error) {
	p := filepath.Join(dir.Name(), name)
	fd, err := openatNoFollow(int(dir.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// openatNoFollow opens name in dir without following a symlink there:
// a symlink is errSymlink.
func openatNoFollow(dir int, name string, flags int) (int, error) {
	fd, err := unix.Openat(dir, name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err == nil {
		return fd, nil
	}
	if errors.Is(err, unix.ELOOP) || (errors.Is(err, unix.ENOTDIR) && flags&unix.O_DIRECTORY != 0) {
		var st unix.Stat_t
		if unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return -1, errSymlink
		}
	}
	return -1, err
}

// readFileAt reads name in dir, at most max bytes. It refuses a symlink,
// anything but a regular file and a file with more than one link (a hard
// link to a file the caller could not otherwise read). A missing file is
// an error matching os.ErrNotExist.
func readFileAt(dir *os.File, name string, max int64) ([]byte, error) {
	p := filepath.Join(dir.Name(), name)
	fd, err := openatNoFollow(int(dir.Fd()), name, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	if err := checkSingleFile(f); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes, left alone", p, max)
	}
	return b, nil
}

// checkSingleFile reports an error unless f is a regular file with one link.
func checkSingleFile(f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return &os.PathError{Op: "stat", Path: f.Name(), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: not a regular file, left alone", f.Name())
	}
	if st.Nlink != 1 {
		return fmt.Errorf("%s: has %d hard links, left alone", f.Name(), st.Nlink)
	}
	return nil
}

// writeFileAt replaces name in dir with data, owned by uid:gid with mode
// perm: through a new temp file in dir (created exclusively, never through
// a link), chowned and chmodded by descriptor, then renamed over name. The
// rename replaces a symlink or hard link at name rather than writing
// through it.
func writeFileAt(dir *os.File, name string, data []byte, perm os.FileMode, uid, gid int) error {
	dfd := int(dir.Fd())
	tmp := name + ".sbx-tmp"
	p := filepath.Join(dir.Name(), name)
	var fd int
	var err error
	for range 3 {
		fd, err = unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
		if !errors.Is(err, unix.EEXIST) {
			break
		}
		// A leftover, or something planted: remove the name itself
		// (unlinkat does not follow a symlink) and try again.
		if err := unix.Unlinkat(dfd, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return &os.PathError{Op: "remove", Path: filepath.Join(dir.Name(), tmp), Err: err}
		}
	}
	if err != nil {
		return &os.PathError{Op: "create", Path: filepath.Join(dir.Name(), tmp), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), tmp))
	err = func() error {
		if _, err := f.Write(data); err != nil {
			return err
		}
		if err := f.Chown(uid, gid); err != nil {
			return err
		}
		return f.Chmod(perm) // after the chown, which may clear set-id bits
	}()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if rerr := unix.Renameat(dfd, tmp, dfd, name); rerr != nil {
			err = &os.PathError{Op: "rename", Path: p, Err: rerr}
		}
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}
	return nil
}
