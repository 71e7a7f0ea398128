package hostcheck

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrUntrusted is wrapped by Program's refusals.
var ErrUntrusted = errors.New("not a trusted program")

// Program vets a host program sbx is about to run (QEMU, qemu-img,
// virtiofsd: each runs as the user, or as root for a probe, before any
// jail), and returns its real path. A guest writes its workspace as the
// workspace's owner, so such a program must lie outside every workspace
// in avoid, and it and every folder above it must belong to root or, when
// sbx does not run as root, to the user, and be writable by nobody else
// (a sticky folder such as /tmp aside): as root only root's files are
// trusted, since a workspace of another user's sandbox is not in avoid.
func Program(path string, avoid []string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrUntrusted, abs, err)
	}
	for _, w := range avoid {
		rw, err := filepath.EvalSymlinks(w)
		if err != nil {
			rw = filepath.Clean(w)
		}
		if real == rw || strings.HasPrefix(real, strings.TrimSuffix(rw, "/")+"/") {
			return "", fmt.Errorf("%w: %s lies inside the workspace %s, where a sandbox could rewrite it", ErrUntrusted, real, w)
		}
	}
	uid := os.Geteuid()
	for p := real; ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		if err != nil {
			return "", fmt.Errorf("%w: %s: %w", ErrUntrusted, p, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return "", fmt.Errorf("%w: cannot tell who owns %s", ErrUntrusted, p)
		}
		if st.Uid != 0 && (uid == 0 || int(st.Uid) != uid) {
			who := "root"
			if uid != 0 {
				who = "you or root"
			}
			return "", fmt.Errorf("%w: %s belongs to uid %d, not to %s", ErrUntrusted, p, st.Uid, who)
		}
		if fi.Mode().Perm()&0o022 != 0 && !(fi.IsDir() && fi.Mode()&os.ModeSticky != 0) {
			return "", fmt.Errorf("%w: %s is writable by other users (mode %v)", ErrUntrusted, p, fi.Mode().Perm())
		}
		if p == "/" {
			break
		}
	}
	return real, nil
}
