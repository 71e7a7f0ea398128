package cli

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/secrets"
)

// Tests for the twelfth outside review; each fails on the code before its
// fix.

// `--env PATH` made every sandbox fail to find bash, `--env HTTPS_PROXY`
// broke the proxy: reserved names are refused, saying why.
func TestSecretSetCustomReservedEnv(t *testing.T) {
	policyHome(t)
	for _, name := range []string{"PATH", "HTTPS_PROXY", "Https_Proxy", "LD_PRELOAD", "SSL_CERT_FILE"} {
		r := runSbxIn(t, "", "secret", "set-custom", "--env", name, "--host", "x.com", "--value", "v-value-1234")
		if r.code != 1 || !strings.Contains(r.err, name+" is reserved") || !strings.Contains(r.err, "choose another name") {
			t.Errorf("set-custom --env %s: %+v", name, r)
		}
	}
}

// A reserved custom secret stored by an older sbx is flagged by `secret ls`.
func TestSecretLsWarnsReservedEnv(t *testing.T) {
	dirs := policyHome(t)
	st := secrets.NewStore(secrets.Options{Dir: dirs.Config})
	os.MkdirAll(st.Dir(), 0o700)
	data := `{"version":1,"entries":[{"name":"PATH","custom":true,"setAt":"2025-01-01T00:00:00Z","hosts":["x.test"],"placeholder":"sbx-ph-aaaa","value":"v-value-1234"}]}`
	if err := os.WriteFile(st.Path(), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runSbxIn(t, "", "secret", "ls")
	if r.code != 0 || !strings.Contains(r.err, "custom secret PATH is not given to sandboxes") || !strings.Contains(r.err, "sbx secret rm -f PATH") {
		t.Errorf("ls: %+v", r)
	}
}

// A damaged index: every secret command said only "cannot read the
// secrets index". Now the file and offset, and how to recover; never a value.
func TestSecretDamagedIndexMessage(t *testing.T) {
	dirs := policyHome(t)
	st := secrets.NewStore(secrets.Options{Dir: dirs.Config})
	os.MkdirAll(st.Dir(), 0o700)
	os.WriteFile(st.Path(), []byte(`{"version":1,"entries":[{"name":"openai","value":"`+cliSecret+`"`), 0o600)
	for _, args := range [][]string{
		{"secret", "ls"},
		{"secret", "set", "openai", "-t", "sk-other-0123456789"},
		{"secret", "rm", "-f", "openai"},
	} {
		r := runSbxIn(t, "", args...)
		if r.code != 1 || !strings.Contains(r.err, st.Path()) || !strings.Contains(r.err, "at byte") ||
			!strings.Contains(r.err, "mv "+st.Path()+" "+st.Path()+".damaged") || !strings.Contains(r.err, "set again") {
			t.Errorf("%v: %+v", args, r)
		}
		if strings.Contains(r.err, cliSecret) || strings.Contains(r.out, cliSecret) {
			t.Errorf("%v shows the value: %+v", args, r)
		}
	}
}

// A full or read-only SBX_HOME: "cannot store the secret" and nothing
// else. The OS error is shown, with what to do.
func TestSecretStoreErrorCause(t *testing.T) {
	dir := "/home/u/.config/sbx/secrets"
	for _, c := range []struct {
		errno syscall.Errno
		want  []string
	}{
		{syscall.ENOSPC, []string{"no space left on device", "df -h " + dir}},
		{syscall.EROFS, []string{"read-only file system", "remount", "SBX_HOME"}},
		{syscall.EACCES, []string{"permission denied", "ls -ld " + dir}},
	} {
		cause := fmt.Errorf("write secrets: %w", &fs.PathError{Op: "write", Path: dir + "/.secrets-1.tmp", Err: c.errno})
		var b strings.Builder
		Render(&b, secretErr(cause, "cannot store the secret"), false)
		for _, w := range append(c.want, "sbx: cannot store the secret: write secrets:", "hint:") {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%v: %q lacks %q", c.errno, b.String(), w)
			}
		}
	}
	// In the CLI: a secrets folder that cannot be made.
	dirs := policyHome(t)
	os.MkdirAll(dirs.Config, 0o700)
	os.WriteFile(filepath.Join(dirs.Config, "secrets"), nil, 0o600)
	r := runSbxIn(t, "", "secret", "set", "openai", "-t", cliSecret)
	if r.code != 1 || !strings.Contains(r.err, "cannot store the secret: ") || !strings.Contains(r.err, "not a directory") || strings.Contains(r.err, cliSecret) {
		t.Errorf("set over a file: %+v", r)
	}
}

func tokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// `--listen garbage` and `--listen 127.0.0.1:99999` said only "cannot
// listen on ...".
func TestDaemonListenAddrMessage(t *testing.T) {
	policyHome(t)
	tok := tokenFile(t)
	for _, c := range []struct{ addr, want string }{
		{"garbage", "missing port"},
		{"127.0.0.1:99999", `port "99999"`},
		{"127.0.0.1:http", `port "http"`},
		{"127.0.0.1", "missing port"},
	} {
		r := runSbxIn(t, "", "daemon", "--socket", filepath.Join(t.TempDir(), "d.sock"), "--listen", c.addr, "--token-file", tok)
		if r.code != 1 || !strings.Contains(r.err, c.want) || !strings.Contains(r.err, "HOST:PORT") || !strings.Contains(r.err, "1 to 65535") {
			t.Errorf("--listen %s: %+v", c.addr, r)
		}
	}
	// A port in use: the OS's reason.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := runSbxIn(t, "", "daemon", "--socket", filepath.Join(t.TempDir(), "d.sock"), "--listen", l.Addr().String(), "--token-file", tok)
	if r.code != 1 || !strings.Contains(r.err, "address already in use") || !strings.Contains(r.err, "another port") {
		t.Errorf("--listen on a used port: %+v", r)
	}
}

// `--socket /tmp/x.sock` said "chmod 700 /tmp, or set XDG_RUNTIME_DIR" and
// "stop the other daemon" with no daemon there.
func TestDaemonSocketSharedFolder(t *testing.T) {
	policyHome(t)
	shared := filepath.Join(t.TempDir(), "tmp")
	os.Mkdir(shared, 0o700)
	if err := os.Chmod(shared, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	r := runSbxIn(t, "", "daemon", "--socket", filepath.Join(shared, "x.sock"))
	if r.code != 1 || !strings.Contains(r.err, "shared by all users") || !strings.Contains(r.err, "only you can write") ||
		!strings.Contains(r.err, "omit --socket") {
		t.Errorf("shared folder: %+v", r)
	}
	for _, bad := range []string{"chmod", "XDG_RUNTIME_DIR", "stop the other daemon"} {
		if strings.Contains(r.err, bad) {
			t.Errorf("shared folder message says %q: %s", bad, r.err)
		}
	}
	// A live socket there: now the hint is to stop that daemon.
	priv := filepath.Join(t.TempDir(), "run")
	os.Mkdir(priv, 0o700)
	sock := filepath.Join(priv, "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	r = runSbxIn(t, "", "daemon", "--socket", sock)
	if r.code != 1 || !strings.Contains(r.err, "another daemon already listens") || !strings.Contains(r.err, "stop the other daemon") {
		t.Errorf("live socket: %+v", r)
	}
}

// `sbx ls` printed a workspace path's control characters as they are: a
// newline split the row. They are escaped; --json keeps the exact path.
func TestLsEscapesWorkspace(t *testing.T) {
	dirs := policyHome(t)
	ws := "/home/u/a\nb\x1b[2Jc"
	sbs := sandbox.NewStore(dirs)
	sb, err := sbs.Create(sandbox.Config{ID: "0123456789ab", Name: "dev", Created: time.Now(),
		Workspaces: []sandbox.Workspace{{Path: ws}}})
	if err == nil {
		err = sbs.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	r := runSbxIn(t, "", "ls")
	if r.code != 0 || strings.Count(r.out, "\n") != 2 || strings.Contains(r.out, "\x1b") || !strings.Contains(r.out, `"/home/u/a\nb\x1b[2Jc"`) {
		t.Errorf("ls table: %+v", r)
	}
	r = runSbxIn(t, "", "ls", "--json")
	var rows []lifecycle.Info
	if err := json.Unmarshal([]byte(r.out), &rows); err != nil || len(rows) != 1 || rows[0].Workspace != ws {
		t.Errorf("ls --json: %v %+v", err, r)
	}
}
