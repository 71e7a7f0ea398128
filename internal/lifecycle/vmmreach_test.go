package lifecycle

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

// Found by the twelfth review: as root, a sandbox of a workspace another
// account owned ran its VM as that account, which read a folder root
// shared from behind /root through /proc/PID/root of QEMU. A share the
// VM's account cannot reach itself is refused; one it can is not; a uid
// no account has is not checked.
func TestCheckVMMReach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the check applies when root runs sbx")
	}
	acct, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("this test needs the nobody account: %v", err)
	}
	uid, _ := strconv.Atoi(acct.Uid)
	gid, _ := strconv.Atoi(acct.Gid)
	base := t.TempDir()
	os.Chmod(filepath.Dir(base), 0o755) // go test's own folder: 0700
	os.Chmod(base, 0o755)
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	own := mk("own", 0o755)
	os.Chown(own, uid, gid)
	closed := mk("closed", 0o700)
	behind := filepath.Join(closed, "open")
	os.Mkdir(behind, 0o755)
	ownBehind := filepath.Join(closed, "own")
	os.Mkdir(ownBehind, 0o700)
	os.Chown(ownBehind, uid, gid)
	readable := mk("readable", 0o755)
	open := mk("open", 0o777)

	for _, c := range []struct {
		extra sandbox.Workspace
		uid   int
		want  string // "" for no refusal
	}{
		{sandbox.Workspace{Path: readable, ReadOnly: true}, uid, ""},
		{sandbox.Workspace{Path: open}, uid, ""},
		{sandbox.Workspace{Path: readable}, uid, "cannot read and write " + readable},
		{sandbox.Workspace{Path: closed, ReadOnly: true}, uid, "cannot read " + closed},
		{sandbox.Workspace{Path: behind, ReadOnly: true}, uid, "cannot read " + behind},
		{sandbox.Workspace{Path: behind, Unshared: true}, uid, ""},
		// Its own folder, even behind one it cannot pass: root gave it.
		{sandbox.Workspace{Path: ownBehind}, uid, ""},
		// No account has the uid: nobody can log in to reach the VM.
		{sandbox.Workspace{Path: behind, ReadOnly: true}, 60999, ""},
	} {
		cfg := sandbox.Config{Name: "t", UID: c.uid, GID: c.uid, Workspaces: []sandbox.Workspace{{Path: own}, c.extra}}
		if c.uid == uid {
			cfg.GID = gid
		}
		err := CheckVMMReach(context.Background(), cfg)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v as uid %d: %v", c.extra, c.uid, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v as uid %d: %v, want a refusal saying %q", c.extra, c.uid, err, c.want)
		}
	}
}
