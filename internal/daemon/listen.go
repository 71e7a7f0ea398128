package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/sbx-dev/sbx/internal/paths"
)

// ListenUnix listens on the unix socket path, readable and writable by
// its owner only (0600, in a folder of the caller's, 0700): whoever can
// connect can run anything in every sandbox. A stale socket (nobody
// answers) is replaced; a live one is an error.
func ListenUnix(path string) (net.Listener, error) {
	// The folder must be the caller's and writable by nobody else: another
	// user could swap the socket in a shared one (the daemon as root
	// under sudo has no XDG_RUNTIME_DIR and lands in /tmp).
	if err := paths.PrivateDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("a daemon already listens on %s", path)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		os.Remove(path)
	}
	// Made 0600 by the umask (a chmod by path after the bind could be
	// sent through a link swapped in meanwhile).
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// ReadToken reads a bearer token from path: the file must be the caller's
// (or root's), readable by nobody else, and hold at least 16 characters.
func ReadToken(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return "", fmt.Errorf("%s belongs to uid %d, not to you", path, st.Uid)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := string(data)
	for len(tok) > 0 && (tok[len(tok)-1] == '\n' || tok[len(tok)-1] == '\r' || tok[len(tok)-1] == ' ') {
		tok = tok[:len(tok)-1]
	}
	if len(tok) < 16 {
		return "", errors.New("the token is shorter than 16 characters")
	}
	return tok, nil
}
