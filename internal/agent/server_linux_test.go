package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startAgent runs a Server over net.Pipe and returns a connected client.
func startAgent(t *testing.T) *agentclient.Client {
	t.Helper()
	return startAgentWith(t, Config{})
}

// startAgentWith is startAgent with cfg's Setup and PowerOff hooks.
func startAgentWith(t *testing.T, hooks Config) *agentclient.Client {
	t.Helper()
	log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	reaper := NewReaper(log, ReapRegistered)
	var wg sync.WaitGroup
	wg.Go(func() { reaper.Run(ctx) })
	srv, err := NewServer(Config{Log: log, Reaper: reaper, DefaultUser: strconv.Itoa(os.Getuid()), Setup: hooks.Setup, PowerOff: hooks.PowerOff})
	if err != nil {
		t.Fatal(err)
	}
	hostEnd, guestEnd := net.Pipe()
	wg.Go(func() {
		if err := srv.Serve(ctx, guestEnd); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("serve: %v", err)
		}
	})
	c, err := agentclient.Dial(t.Context(), hostEnd, log)
	if err != nil {
		cancel()
		wg.Wait()
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		wg.Wait()
	})
	return c
}

type result struct {
	status agentclient.ExitStatus
	stdout string
	stderr string
}

func runExec(t *testing.T, c *agentclient.Client, req agentapi.ExecRequest, eio agentclient.ExecIO) (result, error) {
	t.Helper()
	s, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if eio.Stdout == nil {
		eio.Stdout = &out
	}
	if eio.Stderr == nil {
		eio.Stderr = &errb
	}
	st, err := agentclient.Exec(t.Context(), s, req, eio)
	return result{st, out.String(), errb.String()}, err
}

func TestExecPipes(t *testing.T) {
	c := startAgent(t)
	got, err := runExec(t, c, agentapi.ExecRequest{
		Argv: []string{"sh", "-c", `echo out; echo err >&2; echo "$FOO"; exit 3`},
		Env:  []string{"FOO=bar"},
	}, agentclient.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	want := result{status: agentclient.ExitStatus{Code: 3}, stdout: "out\nbar\n", stderr: "err\n"}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(result{})); diff != "" {
		t.Errorf("exec (-want +got):\n%s", diff)
	}
}

func TestExecStdin(t *testing.T) {
	c := startAgent(t)
	in := strings.Repeat("hello agent\n", 10000)
	got, err := runExec(t, c, agentapi.ExecRequest{Argv: []string{"cat"}}, agentclient.ExecIO{Stdin: strings.NewReader(in)})
	if err != nil {
		t.Fatal(err)
	}
	if got.status.Code != 0 || got.stdout != in {
		t.Errorf("cat: status %+v, stdout %d bytes, want 0 and %d bytes", got.status, len(got.stdout), len(in))
	}
}

func TestExecEnv(t *testing.T) {
	c := startAgent(t)
	got, err := runExec(t, c, agentapi.ExecRequest{Argv: []string{"sh", "-c", `echo "$HOME|$PATH|$TERM|$PWD"`}, Dir: "/"}, agentclient.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	home, _ := os.UserHomeDir()
	want := home + "|" + defaultPath + "||/\n"
	if got.stdout != want {
		t.Errorf("env: got %q, want %q", got.stdout, want)
	}
}

func TestExecNotFound(t *testing.T) {
	c := startAgent(t)
	_, err := runExec(t, c, agentapi.ExecRequest{Argv: []string{"no-such-command-sbx"}}, agentclient.ExecIO{})
	se, ok := errors.AsType[*agentclient.StartError](err)
	if !ok {
		t.Fatalf("exec of missing command: got error %v, want *StartError", err)
	}
	if se.ExitCode != 127 || se.Code != agentapi.CodeNotFound || !strings.Contains(se.Message, "executable file not found in $PATH") {
		t.Errorf("got %+v, want exit code 127, not-found", se)
	}
}

func TestExecPermission(t *testing.T) {
	c := startAgent(t)
	dir := t.TempDir()
	f := filepath.Join(dir, "noexec")
	if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := runExec(t, c, agentapi.ExecRequest{Argv: []string{f}}, agentclient.ExecIO{})
	se, ok := errors.AsType[*agentclient.StartError](err)
	if !ok || se.ExitCode != 126 {
		t.Fatalf("exec of non-executable: got %v, want *StartError with 126", err)
	}
}

// TestExecWorkdirNotEnterable checks that a working folder the user
// cannot enter is reported as such, not as the command being unrunnable.
func TestExecWorkdirNotEnterable(t *testing.T) {
	c := startAgent(t)
	dir := filepath.Join(t.TempDir(), "ws")
	req := agentapi.ExecRequest{Argv: []string{"sh", "-c", "true"}, Dir: dir}
	if os.Getuid() == 0 {
		// A root-owned 0700 workspace and an unprivileged user.
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		req.User = "65534"
	} else if err := os.Mkdir(dir, 0o000); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	_, err := runExec(t, c, req, agentclient.ExecIO{})
	se, ok := errors.AsType[*agentclient.StartError](err)
	if !ok {
		t.Fatalf("exec in unenterable folder: got error %v, want *StartError", err)
	}
	if se.Code != agentapi.CodePermission || !strings.Contains(se.Message, "cannot enter working folder "+dir+" as user ") || !strings.HasSuffix(se.Message, ": permission denied") {
		t.Errorf("got %+v, want permission, cannot enter working folder %s", se, dir)
	}
	// Once every folder on the way can be entered, the exec runs.
	for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := runExec(t, c, req, agentclient.ExecIO{}); err != nil || got.status.Code != 0 {
		t.Errorf("exec after chmod: %+v, %v", got.status, err)
	}
}

// lineWatcher collects output and signals when it contains want.
type lineWatcher struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func newWatcher(want string) *lineWatcher {
	return &lineWatcher{want: want, seen: make(chan struct{})}
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func (w *lineWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestExecTTYResize(t *testing.T) {
	c := startAgent(t)
	out := newWatcher("24 80")
	resize := make(chan agentapi.Size, 1)
	done := make(chan error, 1)
	var st agentclient.ExitStatus
	go func() {
		var err error
		st, err = runExecStatus(t, c, agentapi.ExecRequest{
			Argv: []string{"sh", "-c", `trap 'stty size; exit 0' WINCH; [ -t 0 ] && echo isatty; stty size; while :; do sleep 0.05; done`},
			TTY:  true, Rows: 24, Cols: 80,
		}, agentclient.ExecIO{Stdout: out, Resize: resize})
		done <- err
	}()
	select {
	case <-out.seen:
	case <-time.After(10 * time.Second):
		t.Fatalf("no initial size; output %q", out.String())
	}
	resize <- agentapi.Size{Rows: 40, Cols: 100}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("process did not react to resize; output %q", out.String())
	}
	got := out.String()
	if st.Code != 0 || !strings.Contains(got, "isatty\r\n") || !strings.Contains(got, "40 100\r\n") {
		t.Errorf("got status %+v output %q, want 0 and isatty, 24 80, 40 100", st, got)
	}
}

func runExecStatus(t *testing.T, c *agentclient.Client, req agentapi.ExecRequest, eio agentclient.ExecIO) (agentclient.ExitStatus, error) {
	r, err := runExec(t, c, req, eio)
	return r.status, err
}

func TestExecSignal(t *testing.T) {
	c := startAgent(t)
	out := newWatcher("ready")
	sigs := make(chan syscall.Signal, 1)
	done := make(chan error, 1)
	var st agentclient.ExitStatus
	go func() {
		var err error
		st, err = runExecStatus(t, c, agentapi.ExecRequest{
			Argv: []string{"sh", "-c", `trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done`},
		}, agentclient.ExecIO{Stdout: out, Signals: sigs})
		done <- err
	}()
	select {
	case <-out.seen:
	case <-time.After(10 * time.Second):
		t.Fatalf("process not ready; output %q", out.String())
	}
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("signal did not end the process")
	}
	if st.Code != 7 || !strings.Contains(out.String(), "got-term") {
		t.Errorf("got %+v, output %q; want code 7 and got-term", st, out.String())
	}
}

func TestExecKilledBySignal(t *testing.T) {
	c := startAgent(t)
	got, err := runExec(t, c, agentapi.ExecRequest{Argv: []string{"sh", "-c", "kill -KILL $$"}}, agentclient.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(agentclient.ExitStatus{Code: 137, Signal: "SIGKILL"}, got.status); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
}

func TestExecStreamBreakKills(t *testing.T) {
	c := startAgent(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	s, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	out := newWatcher("started")
	done := make(chan error, 1)
	go func() {
		_, err := agentclient.Exec(ctx, s, agentapi.ExecRequest{
			Argv: []string{"sh", "-c", `echo $$ > ` + pidFile + `; echo started; exec sleep 60`},
		}, agentclient.ExecIO{Stdout: out})
		done <- err
	}()
	<-out.seen
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("exec after cancel: got %v, want context.Canceled", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after the stream broke", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHealthAndHello(t *testing.T) {
	bootPhases.add("kernel", 3*time.Second)
	bootPhases.add("modules", 1500*time.Microsecond)
	t.Cleanup(bootPhases.reset)
	c := startAgent(t)
	if c.Info().ProtocolVersion != agentapi.ProtocolVersion || c.Info().KernelRelease == "" {
		t.Errorf("hello info = %+v", c.Info())
	}
	want := []agentapi.BootPhase{{Name: "kernel", DurationUS: 3_000_000}, {Name: "modules", DurationUS: 1500}}
	if got := c.Info().BootPhases; !slices.Equal(got, want) {
		t.Errorf("hello boot phases = %+v, want %+v", got, want)
	}
	s, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := agentclient.Call(t.Context(), s, agentapi.Request{Op: agentapi.OpHealth, Health: &agentapi.HealthRequest{}})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.OK || resp.Health == nil || resp.Health.Uptime <= 0 {
		t.Errorf("health = %+v", resp)
	}
}

func TestSetupUnsupportedWithoutHook(t *testing.T) {
	c := startAgent(t)
	s, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := agentclient.Call(t.Context(), s, agentapi.Request{Op: agentapi.OpSetup, Setup: &agentapi.SetupRequest{}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.OK || resp.Code != agentapi.CodeUnsupported {
		t.Errorf("setup = %+v, want unsupported", resp)
	}
}

// TestExecWaitsForSetup checks that an exec arriving while setup runs
// (mounting the workspace it will chdir into) starts only after setup.
func TestExecWaitsForSetup(t *testing.T) {
	ws := filepath.Join(t.TempDir(), "ws")
	entered, release := make(chan struct{}), make(chan struct{})
	c := startAgentWith(t, Config{Setup: func(ctx context.Context, req *agentapi.SetupRequest) error {
		close(entered)
		<-release
		return os.Mkdir(ws, 0o755) // stands in for the workspace mount
	}})
	setupDone := make(chan error, 1)
	go func() {
		s, err := c.OpenStream(t.Context())
		if err != nil {
			setupDone <- err
			return
		}
		defer s.Close()
		resp, err := agentclient.Call(t.Context(), s, agentapi.Request{Op: agentapi.OpSetup, Setup: &agentapi.SetupRequest{}})
		if err == nil && !resp.OK {
			err = errors.New(resp.Error)
		}
		setupDone <- err
	}()
	<-entered
	execDone := make(chan error, 1)
	go func() {
		got, err := runExec(t, c, agentapi.ExecRequest{Argv: []string{"pwd"}, Dir: ws}, agentclient.ExecIO{})
		if err == nil && got.stdout != ws+"\n" {
			err = fmt.Errorf("pwd printed %q", got.stdout)
		}
		execDone <- err
	}()
	select {
	case err := <-execDone:
		t.Fatalf("exec finished while setup was running: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-setupDone; err != nil {
		t.Fatalf("setup: %v", err)
	}
	if err := <-execDone; err != nil {
		t.Errorf("exec after setup: %v", err)
	}
}

// TestExecRefusedAfterShutdown checks that once power-off has begun no
// exec or copy starts (workspaces are being unmounted).
func TestExecRefusedAfterShutdown(t *testing.T) {
	powered := make(chan struct{})
	c := startAgentWith(t, Config{PowerOff: func() { close(powered) }})
	s, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := agentclient.Call(t.Context(), s, agentapi.Request{Op: agentapi.OpShutdown, Shutdown: &agentapi.ShutdownRequest{}})
	s.Close()
	if err != nil || !resp.OK {
		t.Fatalf("shutdown: %+v, %v", resp, err)
	}
	<-powered
	_, err = runExec(t, c, agentapi.ExecRequest{Argv: []string{"true"}}, agentclient.ExecIO{})
	if err == nil || !strings.Contains(err.Error(), "the sandbox is shutting down") {
		t.Errorf("exec after shutdown: got %v, want the sandbox is shutting down", err)
	}
	cs, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := agentclient.CopyOut(t.Context(), cs, "/etc/hostname", filepath.Join(t.TempDir(), "x")); err == nil || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("copy-out after shutdown: got %v, want shutting down", err)
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCopyRoundTrip(t *testing.T) {
	c := startAgent(t)
	src := filepath.Join(t.TempDir(), "proj")
	writeFile(t, filepath.Join(src, "a.txt"), "alpha")
	writeFile(t, filepath.Join(src, "sub", "b.txt"), strings.Repeat("b", 200000))
	if err := os.Symlink("a.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	guest := t.TempDir() // stands in for the guest filesystem
	copyIn := func(src, dst string) error {
		s, err := c.OpenStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return agentclient.CopyIn(t.Context(), s, src, dst)
	}
	copyOut := func(src, dst string) error {
		s, err := c.OpenStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return agentclient.CopyOut(t.Context(), s, src, dst)
	}
	// Into an existing directory: lands inside it.
	if err := copyIn(src, guest); err != nil {
		t.Fatal(err)
	}
	// To a new name: created as that name.
	if err := copyIn(filepath.Join(src, "a.txt"), filepath.Join(guest, "renamed.txt")); err != nil {
		t.Fatal(err)
	}
	back := t.TempDir()
	if err := copyOut(filepath.Join(guest, "proj"), filepath.Join(back, "copy")); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a.txt": "alpha", "sub/b.txt": strings.Repeat("b", 200000), "link": "-> a.txt"}
	if diff := cmp.Diff(want, readTree(t, filepath.Join(back, "copy"))); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if b, _ := os.ReadFile(filepath.Join(guest, "renamed.txt")); string(b) != "alpha" {
		t.Errorf("renamed.txt = %q", b)
	}
	// Missing source: not-found from the guest.
	err := copyOut(filepath.Join(guest, "missing"), back)
	if ei, ok := errors.AsType[*agentapi.ErrorInfo](err); !ok || ei.Code != agentapi.CodeNotFound {
		t.Errorf("copy-out of missing path: got %v, want not-found", err)
	}
	// Missing destination parent: not-found.
	err = copyIn(src, filepath.Join(guest, "no", "such", "dir"))
	if ei, ok := errors.AsType[*agentapi.ErrorInfo](err); !ok || ei.Code != agentapi.CodeNotFound {
		t.Errorf("copy-in to missing parent: got %v, want not-found", err)
	}
}

func TestCopyOutSymlinkToRootStaysInside(t *testing.T) {
	c := startAgent(t)
	guest := filepath.Join(t.TempDir(), "tree")
	outside := t.TempDir()
	writeFile(t, filepath.Join(guest, "ok.txt"), "fine")
	if err := os.Symlink("/", filepath.Join(guest, "rootlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(guest, "outlink")); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	s, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := agentclient.CopyOut(t.Context(), s, guest, dst); err != nil {
		t.Fatal(err)
	}
	// The links arrive as links and were not followed.
	if l, err := os.Readlink(filepath.Join(dst, "rootlink")); err != nil || l != "/" {
		t.Errorf("rootlink = %q, %v", l, err)
	}
	entries, _ := os.ReadDir(outside)
	if len(entries) != 0 {
		t.Errorf("copy-out wrote outside the destination: %v", entries)
	}
}

// readTree maps relative paths to contents ("-> target" for symlinks).
func readTree(t *testing.T, root string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.Type()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			got[rel] = "-> " + l
			return err
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			got[rel] = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

var _ io.Writer = (*lineWatcher)(nil)

// Found by the tenth outside review: a host that went away during a
// copy-out (a cancelled download) left the guest's copy waiting for a
// reader forever, and with it every later power-off.
func TestCopyOutHostGoneLetsShutdownThrough(t *testing.T) {
	powered := make(chan struct{})
	c := startAgentWith(t, Config{PowerOff: func() { close(powered) }})
	big := filepath.Join(t.TempDir(), "big")
	f, _ := os.Create(big)
	f.Write(bytes.Repeat([]byte{0x5a}, 8<<20))
	f.Close()
	s, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := agentapi.WriteJSON(s, agentapi.FrameRequest, agentapi.Request{Op: agentapi.OpCopyOut, CopyOut: &agentapi.CopyOutRequest{Path: big}}); err != nil {
		t.Fatal(err)
	}
	var resp agentapi.Response
	if err := agentapi.ReadJSON(s, agentapi.FrameResponse, &resp); err != nil || !resp.OK {
		t.Fatalf("copy-out: %+v %v", resp, err)
	}
	s.Close() // gone, having read nothing of the archive
	time.Sleep(200 * time.Millisecond)
	ss, err := c.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := agentclient.Call(t.Context(), ss, agentapi.Request{Op: agentapi.OpShutdown, Shutdown: &agentapi.ShutdownRequest{}})
		done <- err
	}()
	select {
	case <-powered:
	case <-time.After(20 * time.Second):
		t.Fatal("the power-off waits on the abandoned copy-out")
	}
}
