package resolve

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// CheckHostsFile vets a hosts override before a sandbox uses it and
// returns its real path (symbolic links resolved). The override decides
// where allowed names lead, loopback included, so it must be a file only
// its owner can change: a regular file owned by root or by one of owners,
// neither it nor any folder above it writable by group or others (a
// sticky folder such as /tmp excepted), and not inside any of shared (the
// folders the sandbox's guest can write).
func CheckHostsFile(path string, shared []string, owners ...int) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", abs, err)
	}
	for _, s := range shared {
		rs, err := filepath.EvalSymlinks(s)
		if err != nil {
			rs = filepath.Clean(s)
		}
		if real == rs || strings.HasPrefix(real, strings.TrimSuffix(rs, "/")+"/") {
			return "", fmt.Errorf("%s lies inside the workspace %s, where the sandbox could rewrite it; keep the hosts file outside every workspace", real, s)
		}
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", real, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", real)
	}
	ok := func(p string, fi os.FileInfo, dir bool) error {
		st, isStat := fi.Sys().(*syscall.Stat_t)
		if !isStat {
			return fmt.Errorf("cannot tell who owns %s", p)
		}
		if st.Uid != 0 && !slices.Contains(owners, int(st.Uid)) {
			return fmt.Errorf("%s belongs to uid %d, not to you or root; anyone who owns it decides where sandbox names lead", p, st.Uid)
		}
		if fi.Mode().Perm()&0o022 != 0 && !(dir && fi.Mode()&os.ModeSticky != 0) {
			return fmt.Errorf("%s is writable by other users (mode %v); make it writable by its owner only (chmod go-w)", p, fi.Mode().Perm())
		}
		return nil
	}
	if err := ok(real, fi, false); err != nil {
		return "", err
	}
	for d := filepath.Dir(real); ; d = filepath.Dir(d) {
		di, err := os.Stat(d)
		if err != nil {
			return "", fmt.Errorf("cannot read %s: %w", d, err)
		}
		if err := ok(d, di, true); err != nil {
			return "", err
		}
		if d == "/" {
			break
		}
	}
	return real, nil
}
