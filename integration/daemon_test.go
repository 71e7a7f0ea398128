package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/audit"
	"github.com/sbx-dev/sbx/internal/daemon"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// startDaemon runs `sbx daemon` on a socket of its own and, with token,
// on a TCP port of loopback; it returns both, and the daemon's pid.
func startDaemon(t testing.TB, h *harness, token string) (sock, tcpAddr string, pid int) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "d.sock")
	args := []string{"daemon", "--socket", sock}
	if token != "" {
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--listen", "127.0.0.1:0", "--token-file", tokenFile)
	}
	cmd := exec.Command(sbxBin, args...)
	cmd.Env = h.env
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	// "listening on" the socket, then the TCP address.
	want := 1
	if token != "" {
		want = 2
	}
	sc := bufio.NewScanner(stderr)
	for seen := 0; seen < want && sc.Scan(); {
		line := sc.Text()
		t.Logf("daemon: %s", line)
		if a, ok := strings.CutPrefix(line, "sbx: daemon listening on "); ok {
			seen++
			if strings.HasPrefix(a, "127.0.0.1:") {
				tcpAddr = a
			}
		}
	}
	go func() {
		for sc.Scan() {
			t.Logf("daemon: %s", sc.Text())
		}
	}()
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v %v, want mode 0600", sock, fi, err)
	}
	if token != "" && tcpAddr == "" {
		t.Fatal("the daemon did not say where it listens on TCP")
	}
	return sock, tcpAddr, cmd.Process.Pid
}

// TestDaemonAPI: `sbx daemon` serves the lifecycle of real sandboxes: a
// create through the API boots a real VM, exec streams its output and
// exit code, ports publish, stop and remove work, errors come back as
// their statuses; the TCP listener wants the token; the CLI sees the same
// sandboxes.
func TestDaemonAPI(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	const token = "integration-token-0123456789"
	sock, tcpAddr, _ := startDaemon(t, h, token)
	c := daemon.UnixClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	begin := time.Now()
	in, err := c.Create(ctx, daemon.CreateRequest{Name: "api", Workspace: ws})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("create through the API (boot included): %v", time.Since(begin).Round(time.Millisecond))
	if in.Status != sandbox.StatusRunning {
		t.Fatalf("created: %+v", in)
	}
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, "api", daemon.ExecRequest{Argv: []string{"sh", "-c", `cat; uname -s; echo oops >&2; exit 7`}, Stdin: []byte("in\n")}, &out, &errb)
	if err != nil || code != 7 || out.String() != "in\nLinux\n" || errb.String() != "oops\n" {
		t.Errorf("exec: code %d stdout %q stderr %q err %v", code, out.String(), errb.String(), err)
	}
	// The CLI sees it, and its workspace is the one asked for.
	if row := h.status("api"); row.Status != "running" || row.Workspace != ws {
		t.Errorf("sbx ls: %+v", row)
	}
	ports, err := c.Ports(ctx, "api", daemon.PortsRequest{Publish: []string{"127.0.0.1:0:8000"}})
	if err != nil || len(ports) != 1 || ports[0].HostPort == 0 {
		t.Errorf("publish: %+v %v", ports, err)
	}
	// An interactive exec: a real pseudo-terminal in the guest, of the
	// size asked for, its stdin streamed.
	var tout bytes.Buffer
	code, err = c.ExecTTY(ctx, "api", daemon.TTYRequest{ExecRequest: daemon.ExecRequest{Argv: []string{"sh", "-c", "tty; stty size; read x; echo got=$x; exit 5"}}, Rows: 33, Cols: 111},
		daemon.TTYIO{Stdin: strings.NewReader("typed\n"), Stdout: &tout})
	if err != nil || code != 5 || !strings.Contains(tout.String(), "/dev/pts/") || !strings.Contains(tout.String(), "33 111") || !strings.Contains(tout.String(), "got=typed") {
		t.Errorf("tty exec: code %d err %v output %q", code, err, tout.String())
	}
	// Files up and down, as one file's bytes and as tar.
	if err := c.Upload(ctx, "api", "/home/agent/up/notes.txt", "application/octet-stream", strings.NewReader("uploaded\n")); err == nil {
		t.Error("a raw upload into a missing folder worked")
	}
	if err := c.Upload(ctx, "api", "/home/agent/notes.txt", "application/octet-stream", strings.NewReader("uploaded\n")); err != nil {
		t.Errorf("raw upload: %v", err)
	}
	if res := h.sbx("exec", "api", "--", "sh", "-c", "cat /home/agent/notes.txt; stat -c %U /home/agent/notes.txt"); res.stdout != "uploaded\nagent\n" {
		t.Errorf("the uploaded file in the guest: %+v", res)
	}
	if rc, err := c.Download(ctx, "api", "/home/agent/notes.txt", true); err != nil {
		t.Errorf("raw download: %v", err)
	} else {
		b, _ := io.ReadAll(rc)
		rc.Close()
		if string(b) != "uploaded\n" {
			t.Errorf("raw download: %q", b)
		}
	}
	if rc, err := c.Download(ctx, "api", "/etc/os-release", false); err != nil {
		t.Errorf("tar download: %v", err)
	} else {
		tr := tar.NewReader(rc)
		hdr, err := tr.Next()
		rc.Close()
		if err != nil || hdr.Name != "os-release" {
			t.Errorf("tar download: %+v %v", hdr, err)
		}
	}
	if _, err := c.Download(ctx, "api", "/nonexistent", false); err == nil {
		t.Error("a missing path downloaded")
	}
	// A sandbox's rule through the API counts at once, and its decision
	// shows in the policy log.
	if _, err := c.AddRules(ctx, daemon.RulesRequest{Action: "deny", Resources: []string{"denied.test"}, Sandbox: "api"}); err != nil {
		t.Errorf("add rule: %v", err)
	}
	h.sbx("exec", "api", "--", "sh", "-c", "curl -sS -m 10 http://denied.test/ || true")
	// The audit log is flushed within a fraction of a second.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		rows, err := c.PolicyLog(ctx, "api", 0)
		if err == nil && slices.ContainsFunc(rows, func(r audit.Row) bool { return r.Host == "denied.test" && !r.Allowed }) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("policy log: %+v %v", rows, err)
			break
		}
	}
	if v, err := c.Policy(ctx, "api"); err != nil || !slices.ContainsFunc(v.Rules, func(r lifecycle.PolicyRule) bool { return r.Resource == "denied.test" && r.Sandbox == "api" }) {
		t.Errorf("policy: %+v %v", v, err)
	}
	// TCP: nothing without the token.
	if _, err := daemon.TCPClient(tcpAddr, "").List(ctx); err == nil {
		t.Error("TCP without a token answered")
	}
	if list, err := daemon.TCPClient(tcpAddr, token).List(ctx); err != nil || len(list) != 1 {
		t.Errorf("TCP with the token: %+v %v", list, err)
	}
	if _, err := c.Create(ctx, daemon.CreateRequest{Name: "api", Workspace: ws}); err == nil {
		t.Error("a second create of the name worked")
	}
	if _, err := c.Create(ctx, daemon.CreateRequest{Workspace: "/does/not/exist"}); err == nil {
		t.Error("a missing workspace was taken")
	}
	if in, err := c.Stop(ctx, "api"); err != nil || in.Status != sandbox.StatusStopped {
		t.Errorf("stop: %+v %v", in, err)
	}
	if err := c.Remove(ctx, "api", false); err != nil {
		t.Errorf("remove: %v", err)
	}
	if _, err := c.Get(ctx, "api"); err == nil {
		t.Error("the removed sandbox is still there")
	}
}
