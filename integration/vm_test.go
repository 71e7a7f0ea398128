package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/template"
)

type lsRow struct {
	Name      string `json:"name"`
	ID        string `json:"id"`
	Status    string `json:"status"`
	Reason    string `json:"reason"`
	Workspace string `json:"workspace"`
	Mode      string `json:"mode"`
	Share     string `json:"share"`
	ShareWhy  string `json:"shareWhy"`
}

func (h *harness) ls() []lsRow {
	h.t.Helper()
	res := h.mustSbx("ls", "--json")
	var rows []lsRow
	if err := json.Unmarshal([]byte(res.stdout), &rows); err != nil {
		h.t.Fatalf("ls --json: %v\n%s", err, res.stdout)
	}
	return rows
}

func (h *harness) status(name string) lsRow {
	h.t.Helper()
	for _, r := range h.ls() {
		if r.Name == name {
			return r
		}
	}
	h.t.Fatalf("sandbox %s not in ls", name)
	return lsRow{}
}

// TestRunCommand: output and exit code of a command, its own kernel, the
// workspace at the same path with files owned by the guest user's uid on
// the host, host files outside the workspace out of reach, and the VM
// stopping when the session ends.
func TestRunCommand(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	secretDir := t.TempDir()
	marker := filepath.Join(secretDir, "host-only-marker")
	if err := os.WriteFile(marker, []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := strings.Join([]string{
		"echo out-line",
		"echo err-line >&2",
		"echo cwd=$(pwd)",
		"echo user=$(id -un) uid=$(id -u)",
		"echo bootid=$(cat /proc/sys/kernel/random/boot_id)",
		"echo hello > created-in-guest.txt",
		"if cat " + marker + " 2>/dev/null; then echo MARKER-VISIBLE; fi",
		"exit 7",
	}, "; ")
	res := h.sbx("run", "--name", "t-run", "shell", ws, "--", "-c", script)
	if res.code != 7 {
		h.dumpLogs()
		t.Fatalf("exit code %d, want 7\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	}
	out := res.stdout
	for _, want := range []string{"out-line", "cwd=" + ws, "user=agent uid=1000"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "err-line") || !strings.Contains(res.stderr, "err-line") {
		t.Errorf("stderr not kept apart: stdout %q stderr %q", out, res.stderr)
	}
	if strings.Contains(out, "MARKER-VISIBLE") || strings.Contains(out, "host secret") {
		t.Errorf("guest read a host file outside the workspace:\n%s", out)
	}
	hostBoot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if !strings.Contains(out, "bootid=") || strings.Contains(out, "bootid="+strings.TrimSpace(string(hostBoot))) {
		t.Errorf("guest boot_id equals the host's (not its own kernel?):\n%s", out)
	}
	st, err := os.Stat(filepath.Join(ws, "created-in-guest.txt"))
	if err != nil {
		t.Fatalf("file written in the guest is not in the host workspace: %v", err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; int(uid) != wantUID() {
		t.Errorf("guest-created file owned by uid %d on the host, want %d", uid, wantUID())
	}
	// The VM stops when its last session ends.
	waitStatus(t, h, "t-run", "stopped")
}

// wantUID is the uid files made by the guest user have on the host.
func wantUID() int {
	if os.Getuid() != 0 {
		return os.Getuid()
	}
	if u, err := strconv.Atoi(os.Getenv("SUDO_UID")); err == nil && u > 0 {
		return u
	}
	return 1000
}

func waitStatus(t *testing.T, h *harness, name, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var got lsRow
		for _, r := range h.ls() {
			if r.Name == name {
				got = r
			}
		}
		if got.Status == want {
			return
		}
		if time.Now().After(deadline) {
			h.dumpLogs()
			t.Fatalf("sandbox %s is %s (%s), want %s", name, got.Status, got.Reason, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestLifecycle: create boots detached; exec passes exit codes; state on
// the root disk persists across stop and a start by exec; cp in and out;
// rm deletes everything but the workspace.
func TestLifecycle(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "keep.txt"), []byte("workspace file"), 0o644)
	name := strings.TrimSpace(h.mustSbx("create", "--name", "t-life", ws).stdout)
	if name != "t-life" {
		t.Fatalf("create printed %q", name)
	}
	if st := h.status(name); st.Status != "running" {
		t.Fatalf("after create: %s", st.Status)
	}
	if res := h.sbx("exec", name, "sh", "-c", "exit 42"); res.code != 42 {
		t.Fatalf("exec exit code %d, want 42 (%s)", res.code, res.stderr)
	}
	if res := h.sbx("exec", name, "no-such-command-xyz"); res.code != 127 || !strings.Contains(res.stderr, "no-such-command-xyz") {
		t.Errorf("missing command: exit %d stderr %q, want 127 and a message", res.code, res.stderr)
	}
	h.mustSbx("exec", "-u", "root", name, "sh", "-c", "echo persisted > /root/state.txt && apt-mark showmanual >/dev/null")
	res := h.sbxIn("piped stdin\n", "exec", "-i", name, "sh", "-c", "cat > /home/agent/in.txt && sudo -n true && echo sudo-ok")
	if !strings.Contains(res.stdout, "sudo-ok") {
		t.Fatalf("exec -i / sudo: %+v", res)
	}

	// cp in and out.
	src := filepath.Join(t.TempDir(), "hostfile.txt")
	os.WriteFile(src, []byte("copied in"), 0o644)
	h.mustSbx("cp", src, name+":/home/agent/")
	if got := h.mustSbx("exec", name, "cat", "/home/agent/hostfile.txt").stdout; got != "copied in" {
		t.Errorf("cp in: guest reads %q", got)
	}
	h.mustSbx("exec", name, "sh", "-c", "mkdir -p /tmp/tree/sub && echo deep > /tmp/tree/sub/f && ln -s /etc /tmp/tree/escape && ln -s / /tmp/tree/root")
	outDir := t.TempDir()
	h.mustSbx("cp", name+":/tmp/tree", outDir)
	if data, _ := os.ReadFile(filepath.Join(outDir, "tree", "sub", "f")); string(data) != "deep\n" {
		t.Errorf("cp out: got %q", data)
	}
	if target, err := os.Readlink(filepath.Join(outDir, "tree", "escape")); err != nil || target != "/etc" {
		t.Errorf("cp out: symlink not kept as a link: %q %v", target, err)
	}
	// Set-id bits never come out of a sandbox (gap 4 of the isolation
	// review: sbx run as root used to land a root set-uid shell).
	h.mustSbx("exec", "-u", "root", name, "sh", "-c", "cp /bin/true /tmp/suid && chmod 6755 /tmp/suid")
	h.mustSbx("cp", name+":/tmp/suid", outDir)
	if fi, err := os.Stat(filepath.Join(outDir, "suid")); err != nil {
		t.Errorf("cp out of a set-id file: %v", err)
	} else if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
		t.Errorf("cp out of a set-id file: mode %v, want no set-id bits", fi.Mode())
	}

	h.mustSbx("stop", name)
	if st := h.status(name); st.Status != "stopped" {
		t.Fatalf("after stop: %s", st.Status)
	}
	// exec starts a stopped sandbox, and the root disk kept its state.
	if got := h.mustSbx("exec", "-u", "root", name, "cat", "/root/state.txt").stdout; got != "persisted\n" {
		t.Errorf("after stop/start: /root/state.txt = %q", got)
	}
	if got := h.mustSbx("exec", name, "cat", "/home/agent/in.txt").stdout; got != "piped stdin\n" {
		t.Errorf("after stop/start: in.txt = %q", got)
	}
	if res := h.sbx("rm", name); res.code == 0 {
		t.Errorf("rm of a running sandbox without -f succeeded")
	}
	h.mustSbx("rm", "-f", name)
	if rows := h.ls(); len(rows) != 0 {
		t.Errorf("after rm: ls shows %v", rows)
	}
	entries, _ := os.ReadDir(filepath.Join(h.home, "sandboxes"))
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			t.Errorf("after rm: state folder still holds %s", e.Name())
		}
	}
	if data, err := os.ReadFile(filepath.Join(ws, "keep.txt")); err != nil || string(data) != "workspace file" {
		t.Errorf("rm touched the workspace: %q %v", data, err)
	}
}

// TestPTYResize: exec -t gives a real terminal that follows window-size
// changes of the caller's terminal.
func TestPTYResize(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	name := strings.TrimSpace(h.mustSbx("create", "--name", "t-pty", ws).stdout)
	cmd := exec.Command(sbxBin, "exec", "-it", name, "sh", "-c", `stty size; echo ready; read line; stty size; tty`)
	cmd.Env = h.env
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	var out strings.Builder
	buf := make([]byte, 4096)
	readUntil := func(want string) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in terminal output:\n%s", want, out.String())
			}
			ptmx.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := ptmx.Read(buf)
			out.Write(buf[:n])
		}
	}
	readUntil("ready")
	if !strings.Contains(out.String(), "30 100") {
		t.Errorf("initial size not passed: %q", out.String())
	}
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let SIGWINCH reach sbx and the guest
	ptmx.Write([]byte("go\r"))
	readUntil("/dev/pts/")
	if !strings.Contains(out.String(), "40 120") {
		t.Errorf("resize not seen in the guest:\n%s", out.String())
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exec -it: %v", err)
	}
}

// TestCrashRecovery: a QEMU killed with SIGKILL shows as crashed, and the
// next run recovers the sandbox.
func TestCrashRecovery(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	name := strings.TrimSpace(h.mustSbx("run", "-d", "--name", "t-crash", ws).stdout)
	id := h.status(name).ID
	pid := qemuPID(t, id)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, h, name, "crashed")
	res := h.sbx("run", name, "--", "-c", "echo recovered")
	if res.code != 0 || !strings.Contains(res.stdout, "recovered") {
		h.dumpLogs()
		t.Fatalf("run after crash: %+v", res)
	}
	if !strings.Contains(res.stderr, "crashed") {
		t.Errorf("run after crash did not say it recovered a crashed sandbox: %q", res.stderr)
	}
}

// qemuPID finds the QEMU process of sandbox id by its agent socket path.
func qemuPID(t testing.TB, id string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(data), "\x00")
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "qemu-system") {
			continue
		}
		if strings.Contains(string(data), "/"+id+"/vmm/agent.sock") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no qemu process for sandbox %s", id)
	return 0
}

// TestSessions: creation flags that differ are refused by name, exec -d
// returns at once, SIGINT reaches a process without a terminal, and two
// commands racing to start one stopped sandbox boot it once.
func TestSessions(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	name := strings.TrimSpace(h.mustSbx("create", "--name", "t-ses", ws).stdout)
	if res := h.sbx("run", "--cpus", "2", "-m", "1g", name); res.code == 0 || !strings.Contains(res.stderr, "--cpus") || !strings.Contains(res.stderr, "--memory") {
		t.Errorf("run with other creation flags: exit %d stderr %q", res.code, res.stderr)
	}
	if res := h.sbx("create", "--name", "t-ses2", ws); res.code != 0 {
		t.Errorf("second sandbox with --name on the same workspace: %s", res.stderr)
	}

	res := h.mustSbx("exec", "-d", name, "sh", "-c", "sleep 1; echo bg > /tmp/bg")
	if res.took > 20*time.Second {
		t.Logf("exec -d took %s", res.took)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if out := h.sbx("exec", name, "cat", "/tmp/bg"); out.stdout == "bg\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("exec -d: background command did not run")
		}
		time.Sleep(500 * time.Millisecond)
	}

	// SIGINT to sbx reaches the process in the sandbox.
	cmd := exec.Command(sbxBin, "exec", name, "sh", "-c", `trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.2; done`)
	cmd.Env = h.env
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	if !strings.Contains(string(buf[:n]), "ready") {
		t.Fatalf("no ready line: %q", buf[:n])
	}
	cmd.Process.Signal(syscall.SIGINT)
	rest := make([]byte, 256)
	m, _ := out.Read(rest)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 || !strings.Contains(string(rest[:m]), "got-int") {
		t.Errorf("SIGINT not delivered: err %v output %q", err, rest[:m])
	}

	// Two commands race to start the stopped sandbox: both succeed, one VM.
	h.mustSbx("stop", name)
	id := h.status(name).ID
	errs := make(chan result, 2)
	for range 2 {
		go func() { errs <- h.sbx("exec", name, "cat", "/proc/sys/kernel/random/boot_id") }()
	}
	r1, r2 := <-errs, <-errs
	if r1.code != 0 || r2.code != 0 {
		t.Fatalf("racing execs: %+v %+v", r1, r2)
	}
	if r1.stdout != r2.stdout {
		t.Errorf("racing execs saw two boots: %q vs %q", r1.stdout, r2.stdout)
	}
	qemuPID(t, id)
}

// TestRunSession: an exec into a VM that `sbx run` started does not keep it
// running after the run session ends; --rm removes the sandbox it created;
// logs show the console and the supervisor log.
func TestRunSession(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	run := exec.Command(sbxBin, "run", "--name", "t-att", "shell", ws, "--", "-c", "sleep 6; echo run-done")
	run.Env = h.env
	var runOut strings.Builder
	run.Stdout = &runOut
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, h, "t-att", "running")
	h.mustSbx("exec", "t-att", "true")
	if err := run.Wait(); err != nil || !strings.Contains(runOut.String(), "run-done") {
		t.Fatalf("run: %v %q", err, runOut.String())
	}
	waitStatus(t, h, "t-att", "stopped")

	logs := h.mustSbx("logs", "t-att").stdout
	for _, want := range []string{"==> console", "boot done", "==> supervisor", "sandbox running"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}

	res := h.mustSbx("run", "--rm", "--name", "t-rm", "shell", ws, "--", "-c", "echo in-rm")
	if !strings.Contains(res.stdout, "in-rm") {
		t.Errorf("run --rm output %q", res.stdout)
	}
	for _, r := range h.ls() {
		if r.Name == "t-rm" {
			t.Errorf("run --rm left the sandbox behind (%s)", r.Status)
		}
	}
	if res := h.sbx("run", "--rm", "t-att", "--", "-c", "true"); res.code == 0 || !strings.Contains(res.stderr, "--rm") {
		t.Errorf("run --rm on an existing sandbox: %+v", res)
	}
}

// TestTemplateImmutable: the default template the VM tests booted is a
// read-only image named by its content hash.
func TestTemplateImmutable(t *testing.T) {
	h := newHarness(t)
	h.mustSbx("create", "--name", "t-tmpl", workspace(t))
	dirs, err := paths.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	tp, err := template.Lookup(dirs.Cache, template.DefaultName)
	if err != nil {
		t.Fatalf("default template after a boot: %v", err)
	}
	st, err := os.Stat(tp.Image)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o222 != 0 {
		t.Errorf("template image %s is writable (%v)", tp.Image, st.Mode())
	}
	if filepath.Base(tp.Image) != tp.ID+".ext4" {
		t.Errorf("template image %s is not named by its id %s", tp.Image, tp.ID)
	}
}
