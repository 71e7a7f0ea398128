package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

// When root runs sbx, a sandbox's VMM (QEMU, its file servers) runs as
// the sandbox's uid; when that is an account's (the sudo caller's, or the
// owner of the primary workspace), the account can trace the VMM and see
// what its jail holds. Found by the twelfth review: root shared a folder
// behind /root (0700) into a sandbox of a workspace another account
// owned, and that account read it through /proc/PID/root of QEMU. So a
// share the account could not reach itself is refused: the VMM's account
// must already be able to read (and, when shared read-write, write)
// every folder the sandbox shares that is not its own, checked by the
// kernel with the account's own credentials (ancestors, groups, ACLs).

// CheckVMMReach refuses sb's workspaces when root runs sbx, sb's VMM
// runs as an account, and that account cannot reach one of them with
// the access the share gives.
func CheckVMMReach(ctx context.Context, cfg sandbox.Config) error {
	if os.Geteuid() != 0 || cfg.UID <= 0 {
		return nil
	}
	u, err := user.LookupId(strconv.Itoa(cfg.UID))
	if err != nil {
		// No account has the uid (a free one, FreeIDs): nobody can log
		// in as it to reach the VMM.
		return nil
	}
	groups := []uint32{}
	if gs, err := u.GroupIds(); err == nil {
		for _, g := range gs {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				groups = append(groups, uint32(n))
			}
		}
	}
	for _, w := range cfg.Workspaces {
		if w.Unshared || ownedBy(w.Path, cfg.UID) {
			// A folder of the account's own (root gave it to it; a test's
			// workspace under a 0700 temporary folder) is its to reach.
			continue
		}
		ok, err := reaches(ctx, uint32(cfg.UID), uint32(cfg.GID), groups, w.Path, !w.ReadOnly)
		if err != nil {
			return newErr(Invalid, cfg.Name, err, "", "cannot check that %s (uid %d), as whom the sandbox's VM runs, can reach %s: %v", u.Username, cfg.UID, w.Path, err)
		}
		if !ok {
			access, hint := "read", fmt.Sprintf("share only folders %s can read, or run sbx as %s (sudo -u %s sbx ...)", u.Username, u.Username, u.Username)
			if !w.ReadOnly {
				access, hint = "read and write", fmt.Sprintf("share it read-only (%s:ro) if %s can read it, share only folders %s can write, or run sbx as the folder's owner", w.Path, u.Username, u.Username)
			}
			return newErr(Invalid, cfg.Name, nil, hint,
				"the sandbox's VM runs as %s (uid %d), who cannot %s %s, and through the VM could: refused",
				u.Username, cfg.UID, access, w.Path)
		}
	}
	return nil
}

// ownedBy says whether folder p belongs to uid.
func ownedBy(p string, uid int) bool {
	fi, err := os.Stat(p)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == uid
}

// reaches says whether uid (with gid and groups) can list folder p, and
// write it when write is set: test(1) run with those credentials, so the
// kernel decides.
func reaches(ctx context.Context, uid, gid uint32, groups []uint32, p string, write bool) (bool, error) {
	bin := "/usr/bin/test"
	if _, err := os.Stat(bin); err != nil {
		bin = "/bin/test"
	}
	args := []string{"-r", p, "-a", "-x", p}
	if write {
		args = append(args, "-a", "-w", p)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.ExitCode() == 1 && len(out) == 0:
		return false, nil
	default:
		return false, fmt.Errorf("%s: %v %s", bin, err, strings.TrimSpace(string(out)))
	}
}
