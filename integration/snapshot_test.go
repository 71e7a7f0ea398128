package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// guestIdentity is what one sandbox reports about itself.
type guestIdentity struct {
	hostname, machineID, mac, random, marker string
	clockSkew                                time.Duration
}

// identityOf execs in sandbox name and reads its identity, the marker
// file of workspace ws, and its clock against the host's (the guest's
// time must fall between the host's before and after the exec, give or
// take a second).
func identityOf(t *testing.T, h *harness, name, ws string) guestIdentity {
	t.Helper()
	before := time.Now()
	out := h.mustSbx("exec", name, "sh", "-c",
		"hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s.%N; cat "+filepath.Join(ws, "marker")).stdout
	after := time.Now()
	f := strings.Split(strings.TrimSpace(out), "\n")
	if len(f) != 6 {
		t.Fatalf("identity of %s: got %q", name, out)
	}
	secs, err := strconv.ParseFloat(f[4], 64)
	if err != nil {
		t.Fatalf("guest date %q: %v", f[4], err)
	}
	guest := time.Unix(0, int64(secs*1e9))
	var skew time.Duration
	switch {
	case guest.Before(before):
		skew = before.Sub(guest)
	case guest.After(after):
		skew = guest.Sub(after)
	}
	return guestIdentity{hostname: f[0], machineID: f[1], mac: f[2], random: f[3], clockSkew: skew, marker: f[5]}
}

// TestSnapshot: new sandboxes resume the template's pre-booted snapshot
// and each gets its own identity, workspace and network; a later start
// boots cold; a changed kernel makes a new snapshot.
func TestSnapshot(t *testing.T) {
	h := newHarness(t)
	wsA, wsB := workspace(t), workspace(t)
	os.WriteFile(filepath.Join(wsA, "marker"), []byte("workspace A\n"), 0o644)
	os.WriteFile(filepath.Join(wsB, "marker"), []byte("workspace B\n"), 0o644)

	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from snap.test\n")
	}))
	defer web.Close()
	port := web.Listener.Addr().(*net.TCPAddr).Port
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 snap.test\n"), 0o644)
	h.env = append(h.env, "SBX_HOSTS_FILE="+hosts)
	h.mustSbx("policy", "init", "balanced")
	h.mustSbx("policy", "allow", "network", fmt.Sprintf("snap.test:%d", port))

	// The first create may save the snapshot; both resume it.
	resA := h.mustSbx("--debug", "create", "--name", "snap-a", wsA)
	resB := h.mustSbx("--debug", "create", "--name", "snap-b", wsB)
	for _, r := range []result{resA, resB} {
		if !strings.Contains(r.stderr, "boot: resuming snapshot") || strings.Contains(r.stderr, "booted cold instead") {
			h.dumpLogs()
			t.Fatalf("create did not start from the snapshot:\n%s", r.stderr)
		}
	}
	a := identityOf(t, h, "snap-a", wsA)
	b := identityOf(t, h, "snap-b", wsB)
	t.Logf("a: %+v", a)
	t.Logf("b: %+v", b)
	if a.hostname != "snap-a" || b.hostname != "snap-b" {
		t.Errorf("hostnames %q, %q; want the sandbox names", a.hostname, b.hostname)
	}
	if a.machineID == b.machineID || len(a.machineID) != 32 {
		t.Errorf("machine ids %q and %q: want two different ones", a.machineID, b.machineID)
	}
	if a.mac == b.mac {
		t.Errorf("both sandboxes have MAC %s", a.mac)
	}
	if a.random == b.random {
		t.Errorf("both sandboxes read %s from /dev/urandom", a.random)
	}
	if a.marker != "workspace A" || b.marker != "workspace B" {
		t.Errorf("workspaces: a sees %q, b sees %q", a.marker, b.marker)
	}
	for _, g := range []guestIdentity{a, b} {
		if g.clockSkew > time.Second {
			t.Errorf("guest %s clock is %s off the host's", g.hostname, g.clockSkew)
		}
	}
	// The MAC is the sandbox's own, from its config.
	for name, g := range map[string]guestIdentity{"snap-a": a, "snap-b": b} {
		var cfg struct {
			MAC      string `json:"mac"`
			Snapshot string `json:"snapshot"`
		}
		id := ""
		for _, r := range h.ls() {
			if r.Name == name {
				id = r.ID
			}
		}
		data, err := os.ReadFile(filepath.Join(h.home, "sandboxes", id, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(data, &cfg)
		if !strings.EqualFold(cfg.MAC, g.mac) || cfg.Snapshot == "" {
			t.Errorf("%s: guest MAC %s, config MAC %s, snapshot %q", name, g.mac, cfg.MAC, cfg.Snapshot)
		}
	}
	// Network: an allowed name through the proxy, from both.
	for _, name := range []string{"snap-a", "snap-b"} {
		res := h.sbx("exec", name, "curl", "-sS", "-m", "20", fmt.Sprintf("http://snap.test:%d/", port))
		if res.code != 0 || !strings.Contains(res.stdout, "hello from snap.test") {
			t.Errorf("%s: curl snap.test: %d %s %s", name, res.code, res.stdout, res.stderr)
		}
	}
	// The workspace is writable and the write lands on the host.
	h.mustSbx("exec", "snap-a", "sh", "-c", "echo from-guest > "+filepath.Join(wsA, "out"))
	if data, _ := os.ReadFile(filepath.Join(wsA, "out")); string(data) != "from-guest\n" {
		t.Errorf("workspace write: host reads %q", data)
	}
	if _, err := os.Stat(filepath.Join(wsB, "out")); err == nil {
		t.Error("a write in sandbox a's workspace appeared in b's")
	}

	// A later start boots cold, on the disk the sandbox left.
	h.mustSbx("exec", "snap-a", "sh", "-c", "echo kept > /home/agent/kept")
	h.mustSbx("stop", "snap-a")
	res := h.mustSbx("--debug", "exec", "snap-a", "cat", "/home/agent/kept")
	if !strings.Contains(res.stderr, "boot: cold") || strings.TrimSpace(res.stdout) != "kept" {
		t.Errorf("restart: want a cold boot keeping /home/agent/kept; stdout %q stderr:\n%s", res.stdout, res.stderr)
	}
	if a2 := identityOf(t, h, "snap-a", wsA); a2.machineID != a.machineID || a2.mac != a.mac || a2.clockSkew > time.Second {
		t.Errorf("after a cold restart: %+v, before %+v", a2, a)
	}

	// Another kernel (a copy: another file) makes the snapshot stale: the
	// next create says why, saves a new one and resumes it.
	kernels, _ := filepath.Glob(filepath.Join(cacheDir(t), "kernel", "*", "vmlinux"))
	if len(kernels) == 0 {
		t.Fatal("no cached kernel")
	}
	release := filepath.Base(filepath.Dir(kernels[0]))
	mods := filepath.Join(filepath.Dir(kernels[0]), "lib", "modules", release)
	if _, err := os.Stat(mods); err != nil {
		t.Fatalf("kernel modules: %v", err)
	}
	kcopy := filepath.Join(t.TempDir(), "vmlinux")
	if out, err := exec.Command("cp", kernels[0], kcopy).CombinedOutput(); err != nil {
		t.Fatalf("copy kernel: %v %s", err, out)
	}
	h.env = append(h.env, "SBX_KERNEL="+kcopy, "SBX_KERNEL_MODULES="+mods)
	res = h.mustSbx("--debug", "run", "--rm", "--name", "snap-c", "shell", wsB, "--", "-c", "cat "+filepath.Join(wsB, "marker"))
	// (Other inputs may differ too when the newest snapshot of the family
	// came from another sbx build sharing the cache.)
	if !regexp.MustCompile(`out of date \([^)]*kernel[^)]* changed\)`).MatchString(res.stderr) || !strings.Contains(res.stderr, "boot: resuming snapshot") || strings.TrimSpace(res.stdout) != "workspace B" {
		t.Errorf("after a kernel change: stdout %q stderr:\n%s", res.stdout, res.stderr)
	}

	// The save ran in a snapshot supervisor, whose log is the cache's.
	snapDir := filepath.Join(cacheDir(t), "snapshots")
	if log, err := os.ReadFile(filepath.Join(snapDir, "build.log")); err != nil || !strings.Contains(string(log), "snapshot supervisor started") || !strings.Contains(string(log), "snapshot saved") {
		t.Errorf("the snapshot supervisor's log: %v\n%s", err, log)
	}

	// Ctrl-C during a save: the create ends, and the snapshot VM and its
	// half-made folder go with it (yet another kernel: a save is needed).
	kcopy2 := filepath.Join(t.TempDir(), "vmlinux")
	if out, err := exec.Command("cp", kernels[0], kcopy2).CombinedOutput(); err != nil {
		t.Fatalf("copy kernel: %v %s", err, out)
	}
	cmd := exec.Command(sbxBin, "create", "--name", "snap-e", wsB)
	cmd.Env = append(h.env, "SBX_KERNEL="+kcopy2)
	var cerr strings.Builder
	cmd.Stderr = &cerr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tmps := func() []string { m, _ := filepath.Glob(filepath.Join(snapDir, ".tmp-*")); return m }
	saving := false
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline) && !saving; time.Sleep(100 * time.Millisecond) {
		saving = len(tmps()) > 0
	}
	if !saving {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("no snapshot save began: %s", cerr.String())
	}
	tmp := tmps()[0]
	time.Sleep(time.Second) // QEMU is up
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err == nil {
		t.Errorf("an interrupted create succeeded: %s", cerr.String())
	}
	gone := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && !gone; time.Sleep(200 * time.Millisecond) {
		out, _ := exec.Command("pgrep", "-f", filepath.Base(tmp)).Output()
		_, serr := os.Stat(tmp)
		gone = len(strings.TrimSpace(string(out))) == 0 && os.IsNotExist(serr)
	}
	if !gone {
		out, _ := exec.Command("pgrep", "-af", filepath.Base(tmp)).Output()
		t.Errorf("after Ctrl-C during the save, left: processes %q, folder %s", out, tmp)
	}
	// Stopped, not finished in the background, and not marked failed.
	key := strings.TrimPrefix(filepath.Base(tmp), ".tmp-")
	key = key[:strings.LastIndex(key, "-")]
	for _, left := range []string{filepath.Join(snapDir, key), filepath.Join(snapDir, key+".failed")} {
		if _, err := os.Stat(left); err == nil {
			t.Errorf("an interrupted save left %s", left)
		}
	}
	for _, r := range h.ls() {
		if r.Name == "snap-e" {
			t.Errorf("an interrupted create left sandbox %+v", r)
		}
	}

	// --cold: no snapshot at all.
	res = h.mustSbx("--debug", "run", "--rm", "--cold", "--name", "snap-d", "shell", wsB, "--", "-c", "true")
	if !strings.Contains(res.stderr, "boot: cold") {
		t.Errorf("--cold: stderr:\n%s", res.stderr)
	}
}

// cacheDir is the sbx cache the tests share.
func cacheDir(t *testing.T) string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "sbx")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(home, ".cache", "sbx")
}
