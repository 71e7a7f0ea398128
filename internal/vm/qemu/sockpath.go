package qemu

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// socketRef opens the unix socket at path without following a symbolic
// link in its last component and returns a path that names that very
// socket (/proc/self/fd/N) and a func to close it after connecting. The
// socket folder belongs to the VMM user, so an escaped VMM could put a
// link there to another host socket (the host's Docker daemon) for root
// to connect to; here it gets refused instead.
func socketRef(path string) (string, func(), error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return "", nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		unix.Close(fd)
		return "", nil, fmt.Errorf("%s is not a socket (mode %o): refusing to connect", path, st.Mode)
	}
	return fmt.Sprintf("/proc/self/fd/%d", fd), func() { unix.Close(fd) }, nil
}
