package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestVirtioFS: a cold boot shares the workspace over virtio-fs (served
// by the jailed virtiofsd of QEMU's package here), live both ways, with
// large files, renames, hard links and symbolic links kept inside, every
// file the guest makes owned by the workspace user on the host and no
// set-id bit, foreign owner or device coming through; a snapshot start
// and a host without a server use 9p and say why in `sbx ls`.
func TestVirtioFS(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	hostFile := filepath.Join(ws, "from-host.txt")
	if err := os.WriteFile(hostFile, []byte("v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		os.Chown(hostFile, wantUID(), wantUID())
	}
	// A file the user made set-uid on the host: a guest write, even by
	// root, clears the bit (the server has no CAP_FSETID).
	suidFile := filepath.Join(ws, "suid-tool")
	if err := os.WriteFile(suidFile, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		os.Chown(suidFile, wantUID(), wantUID())
	}
	if err := os.Chmod(suidFile, 0o755|os.ModeSetuid|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	h.mustSbx("run", "-d", "--cold", "--name", "vfs", "shell", ws)
	row := h.status("vfs")
	if row.Share != "virtiofs" || row.Mode != "direct" {
		t.Fatalf("sbx ls: mode %q share %q (%s), want direct over virtiofs", row.Mode, row.Share, row.ShareWhy)
	}
	if m := h.mustSbx("exec", "vfs", "sh", "-c", "grep ' "+ws+" ' /proc/mounts").stdout; !strings.Contains(m, " virtiofs ") {
		t.Fatalf("guest mounts: %s", m)
	}

	// Live host -> guest: an edit shows in the guest while it is running
	// (cache=auto keeps attributes for a second).
	if got := h.mustSbx("exec", "vfs", "cat", hostFile).stdout; got != "v1\n" {
		t.Fatalf("guest reads %q", got)
	}
	if err := os.WriteFile(hostFile, []byte("v2 longer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	edited := time.Now()
	seen := h.mustSbx("exec", "vfs", "sh", "-c", `for i in $(seq 100); do [ "$(cat "$1")" = "v2 longer" ] && { echo seen; exit; }; sleep 0.05; done; echo stale`, "sh", hostFile).stdout
	t.Logf("host edit seen by the guest %v after it was made (sbx exec included)", time.Since(edited).Round(time.Millisecond))
	if strings.TrimSpace(seen) != "seen" {
		t.Errorf("the guest still reads the old content after 5 s")
	}

	// Guest -> host, and what the guest may and may not make.
	script := `set -e; cd "$1"
dd if=/dev/urandom of=big bs=1M count=48 status=none; sha256sum big | cut -d' ' -f1 > big.sum
echo a > a; mv a renamed; ln renamed hard; mkdir -p sub; ln -s ../renamed sub/rel; ln -s /etc/passwd abs
sudo sh -c 'echo r > byroot'
sudo chown 0:0 renamed 2>/dev/null && echo chown-ok || echo chown-refused
sudo chmod 4755 byroot 2>/dev/null && echo setuid-ok || echo setuid-refused
sudo mknod dev c 1 3 2>/dev/null && echo mknod-ok || echo mknod-refused
sudo sh -c 'echo "echo x" >> suid-tool'
sync`
	out := h.mustSbx("exec", "vfs", "bash", "-c", script, "bash", ws).stdout
	for _, want := range []string{"chown-refused", "setuid-refused", "mknod-refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest: want %s in:\n%s", want, out)
		}
	}
	sum, _ := os.ReadFile(filepath.Join(ws, "big.sum"))
	f, err := os.Open(filepath.Join(ws, "big"))
	if err != nil {
		t.Fatal(err)
	}
	hash := sha256.New()
	n, _ := io.Copy(hash, f)
	f.Close()
	if got := hex.EncodeToString(hash.Sum(nil)); n != 48<<20 || got != strings.TrimSpace(string(sum)) {
		t.Errorf("the 48 MiB file on the host: %d bytes, sha256 %s; the guest wrote %s", n, got, sum)
	}
	if _, err := os.Stat(filepath.Join(ws, "a")); err == nil {
		t.Error("the renamed file is still under its old name on the host")
	}
	r, err1 := os.Stat(filepath.Join(ws, "renamed"))
	hd, err2 := os.Stat(filepath.Join(ws, "hard"))
	if err1 != nil || err2 != nil || !os.SameFile(r, hd) || r.Sys().(*syscall.Stat_t).Nlink != 2 {
		t.Errorf("hard link on the host: %v %v", err1, err2)
	}
	for link, want := range map[string]string{"sub/rel": "../renamed", "abs": "/etc/passwd"} {
		if got, err := os.Readlink(filepath.Join(ws, link)); err != nil || got != want {
			t.Errorf("symlink %s on the host: %q %v, want %q", link, got, err, want)
		}
	}
	for _, name := range []string{"big", "renamed", "byroot", "sub", "sub/rel", "suid-tool"} {
		fi, err := os.Lstat(filepath.Join(ws, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != wantUID() || fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("%s on the host: uid %d mode %v, want uid %d and no set-id bit", name, st.Uid, fi.Mode(), wantUID())
		}
	}
	if _, err := os.Lstat(filepath.Join(ws, "dev")); err == nil {
		t.Error("the guest made a device node in the workspace")
	}

	// The server dies while the VM runs: a command in the workspace does
	// not hang on it forever; the VM is stopped and says why (found when
	// a server crashed under load and every guest process touching the
	// workspace hung with nothing said).
	id := h.status("vfs").ID
	pids, err := exec.Command("pgrep", "-f", "virtiofsd --socket-path=[^ ]*/"+id+"/").Output()
	if err != nil || len(strings.Fields(string(pids))) == 0 {
		t.Fatalf("the sandbox's virtiofsd: %v %q", err, pids)
	}
	killed := make(chan error, 1)
	go func() {
		time.Sleep(2 * time.Second)
		killed <- exec.Command("kill", append([]string{"-9"}, strings.Fields(string(pids))...)...).Run()
	}()
	res := h.sbx("exec", "vfs", "sh", "-c", `sleep 4; ls "$1" >/dev/null; echo still-served`, "sh", ws)
	if err := <-killed; err != nil {
		t.Fatalf("kill virtiofsd: %v", err)
	}
	if res.code == 0 || !strings.Contains(res.stderr, "file server exited") {
		t.Errorf("a command while the server died: exit %d, %q %q; want a failure that says the server exited", res.code, res.stdout, res.stderr)
	}
	if row := h.status("vfs"); row.Status != "crashed" || !strings.Contains(row.Reason, "file server exited") {
		t.Errorf("after the server died: status %q (%s), want crashed and why", row.Status, row.Reason)
	}
	h.mustSbx("run", "-d", "vfs")
	if got := h.mustSbx("exec", "vfs", "cat", hostFile).stdout; got != "v2 longer\n" {
		t.Errorf("after a restart the guest reads %q", got)
	}
	h.mustSbx("stop", "vfs")

	// No server: the same sandbox boots with 9p, and says why.
	saved := h.env
	h.env = append(slices.Clip(h.env), "SBX_VIRTIOFSD=none")
	h.mustSbx("run", "-d", "vfs")
	h.env = saved
	row = h.status("vfs")
	if row.Share != "9p" || !strings.Contains(row.ShareWhy, "SBX_VIRTIOFSD=none") {
		t.Errorf("without a server: share %q (%s), want 9p and the reason", row.Share, row.ShareWhy)
	}
	if m := h.mustSbx("exec", "vfs", "sh", "-c", "grep ' "+ws+" ' /proc/mounts").stdout; !strings.Contains(m, " 9p ") {
		t.Errorf("guest mounts without a server: %s", m)
	}
	h.mustSbx("stop", "vfs")

	// A server inside a workspace (the guest could rewrite it, and sbx
	// ran it as root before any jail) is refused with why: the fifth
	// review's finding.
	tools := filepath.Join(ws, "tools")
	os.Mkdir(tools, 0o755)
	planted := filepath.Join(tools, "virtiofsd")
	if b, err := os.ReadFile("/usr/lib/qemu/virtiofsd"); err == nil {
		os.WriteFile(planted, b, 0o755)
	} else {
		os.WriteFile(planted, []byte("#!/bin/sh\n"), 0o755)
	}
	h.env = append(slices.Clip(h.env), "SBX_VIRTIOFSD="+planted)
	res = h.sbx("run", "-d", "vfs")
	h.env = saved
	if res.code == 0 || !strings.Contains(res.stderr, "inside the workspace") {
		t.Errorf("a virtiofsd in the workspace: exit %d, %q; want a refusal", res.code, res.stderr)
	}

	// A snapshot start: 9p, said, and its next start is virtio-fs.
	ws2 := workspace(t)
	h.mustSbx("run", "-d", "--name", "snap", "shell", ws2)
	row = h.status("snap")
	if row.Share != "9p" || !strings.Contains(row.ShareWhy, "snapshot") {
		t.Errorf("snapshot start: share %q (%s), want 9p and why", row.Share, row.ShareWhy)
	}
	h.mustSbx("stop", "snap")
	h.mustSbx("run", "-d", "snap")
	if row = h.status("snap"); row.Share != "virtiofs" {
		t.Errorf("second start of a snapshot sandbox: share %q (%s), want virtiofs", row.Share, row.ShareWhy)
	}
	h.mustSbx("stop", "snap")
}
