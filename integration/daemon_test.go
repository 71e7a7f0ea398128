package integration

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/daemon"
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
