package integration

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkWorkspaceTransports: the same work in one guest, in the
// workspace shared over 9p, over virtio-fs, and on the guest's own disk
// (the baseline): `git status` in a repository of 10,000 committed files
// made on the host (median of 3 after an untimed run), create + stat
// 1,000 small files, `grep -r` over the repository, and a build of a
// real multi-file project: byte-compiling ten packages of Python's
// standard library (`python3 -m compileall -f`, the agents template's
// python3), which reads every source and writes every .pyc.
func BenchmarkWorkspaceTransports(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	makeRepo(b, filepath.Join(ws, "repo"), 100, 100)
	const name = "transports"

	// The build's sources, copied from the guest's own Python (untimed).
	pkgs := "json email http asyncio unittest xml logging concurrent importlib multiprocessing"
	setup := func(dir string) string {
		return fmt.Sprintf(`set -e; mkdir -p %[1]q/pylib; for p in %[2]s; do cp -r /usr/lib/python3.11/$p %[1]q/pylib/; done
find %[1]q/pylib -name __pycache__ -prune -exec rm -rf {} +`, dir, pkgs)
	}
	work := func(dir string) string {
		return fmt.Sprintf(`set -e; cd %[1]q
t() { s=$(date +%%s%%N); "$@" >/dev/null 2>&1 || true; e=$(date +%%s%%N); echo -n "$((e-s)) "; }
g() { git -c safe.directory='*' -C repo status --porcelain; }
g >/dev/null
t g; t g; t g
mk() { rm -rf small; mkdir small; for i in $(seq 1000); do echo "file $i" > small/f$i; done; stat -c %%s small/* >/dev/null; }
t mk
t grep -r --exclude-dir=.git nothere repo
t python3 -m compileall -q -f -j 1 pylib
echo`, dir)
	}
	type figures struct{ status, small, grep, build time.Duration }
	parse := func(out string) figures {
		ds := nanos(b, out)
		if len(ds) != 6 {
			b.Fatalf("script printed %v", ds)
		}
		return figures{status: median(ds[:3]), small: ds[3], grep: ds[4], build: ds[5]}
	}

	// 9p: a cold boot with no virtio-fs server.
	saved := h.env
	h.env = append(slices.Clip(h.env), "SBX_VIRTIOFSD=none")
	h.mustSbx("run", "-d", "--cold", "-t", "agents", "--name", name, "shell", ws)
	h.env = saved
	readBoot(b, h)
	if row := h.status(name); row.Share != "9p" {
		b.Fatalf("first boot shares over %q, want 9p", row.Share)
	}
	guestScript(b, h, name, setup(ws))
	p9 := parse(guestScript(b, h, name, work(ws)))
	h.mustSbx("stop", name)

	// virtio-fs, and the guest's own disk, in the same guest.
	h.mustSbx("run", "-d", name)
	if row := h.status(name); row.Share != "virtiofs" {
		b.Fatalf("second boot shares over %q (%s), want virtiofs", row.Share, row.ShareWhy)
	}
	vfs := parse(guestScript(b, h, name, work(ws)))
	own := "/home/agent/own-disk"
	guestScript(b, h, name, fmt.Sprintf("set -e; mkdir -p %[1]s; cp -a %[2]q/repo %[2]q/pylib %[1]s/; find %[1]s/pylib -name __pycache__ -prune -exec rm -rf {} +", own, ws))
	disk := parse(guestScript(b, h, name, work(own)))
	h.mustSbx("stop", name)

	// Clone mode: a clone of the same repository (the build's sources
	// committed to it first), in a sandbox of its own.
	repo := filepath.Join(ws, "repo")
	hostScript(b, fmt.Sprintf(`set -e; mv %[1]q/pylib %[2]q/pylib; cd %[2]q; find pylib -name __pycache__ -prune -exec rm -rf {} +
git -c safe.directory='*' add -A pylib; git -c safe.directory='*' -c user.name=b -c user.email=b@example.invalid commit -qm pylib
if [ "$(id -u)" = 0 ]; then chown -R %[3]d:%[3]d .; fi`, ws, repo, wantUID()))
	h.mustSbx("create", "--clone", "-t", "agents", "--name", "cloned", repo)
	inClone := strings.NewReplacer("-C repo", "-C .", "nothere repo", "nothere .").Replace(work(repo))
	cl := parse(guestScript(b, h, "cloned", inClone))
	h.mustSbx("stop", "cloned")
	b.Logf("9p %+v; virtio-fs %+v; clone %+v; guest disk %+v", p9, vfs, cl, disk)

	for _, m := range []struct {
		what string
		get  func(figures) time.Duration
		aim  string
	}{
		{"`git status`, 10,000 files", func(f figures) time.Duration { return f.status }, "virtio-fs <= 3x, clone mode <= 1.2x"},
		{"create + stat 1,000 files", func(f figures) time.Duration { return f.small }, ""},
		{"`grep -r` over 10,000 files", func(f figures) time.Duration { return f.grep }, ""},
		{"build: byte-compile 10 Python packages", func(f figures) time.Duration { return f.build }, "virtio-fs <= 3x, clone mode <= 1.2x"},
	} {
		for _, t := range []struct {
			name string
			f    figures
		}{{"9p", p9}, {"virtio-fs", vfs}, {"clone mode", cl}} {
			aim := ""
			for _, a := range strings.Split(m.aim, ", ") {
				if strings.HasPrefix(a, t.name+" ") {
					aim = strings.TrimPrefix(a, t.name+" ")
				}
			}
			report(b, benchResult{
				Name: "workspace over " + t.name + ": " + m.what, Unit: "ms", Value: ms(m.get(t.f)),
				Baseline: "the same on the guest's own disk", BaseVal: ms(m.get(disk)), Aim: aim,
			})
		}
	}
}
