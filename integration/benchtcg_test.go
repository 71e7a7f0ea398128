package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tcgWorkload is a few seconds of varied guest work (processes, git,
// compression, perl, a file tree walk), enough to fill a small translation
// cache; it prints its own run time in nanoseconds.
const tcgWorkload = `set -e; s=$(date +%s%N); d=$(mktemp -d); cd "$d"
for i in $(seq 200); do echo "line $i" > "f$i"; done
git init -q; git add -A; git -c user.name=b -c user.email=b@example.invalid commit -qm x
tar cf - /usr/share/perl5 2>/dev/null | gzip -1 | sha256sum >/dev/null
perl -e 'my %h; $h{$_} = $_ * 2 for 1..20000' ; find /usr -xdev -type f 2>/dev/null | wc -l >/dev/null
ls -lR /etc >/dev/null 2>&1 || true; cd /; rm -rf "$d"; e=$(date +%s%N); echo $((e-s))`

// BenchmarkTCGCacheSize (only with SBX_BENCH_TB_SIZES, e.g.
// "32,64,128,256"): how QEMU's TCG translation cache size (-accel
// tcg,tb-size=MiB; sbx uses 256) changes cold start, a bare boot to /init,
// host memory per idle sandbox (before and after a workload) and the
// workload's own time. QEMU runs through a wrapper (SBX_QEMU) that rewrites
// tb-size; each figure's baseline is the same at tb-size=256, measured in
// this run. Meaningless under KVM.
func BenchmarkTCGCacheSize(b *testing.B) {
	env := os.Getenv("SBX_BENCH_TB_SIZES")
	if env == "" {
		b.Skip("set SBX_BENCH_TB_SIZES=32,64,128,256 to measure the TCG translation cache sizes")
	}
	sizes := []int{defaultTBSize}
	for _, f := range strings.Split(env, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("SBX_BENCH_TB_SIZES: bad size %q", f)
		}
		if !slices.Contains(sizes, n) {
			sizes = append(sizes, n)
		}
	}
	real, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		b.Skip(err)
	}
	type figures struct {
		cold, bare, workload            time.Duration
		bareRSS, idle, idleTotal, after int64
	}
	got := map[int]figures{}
	for _, tb := range sizes {
		dir := b.TempDir()
		wrapper := filepath.Join(dir, "qemu-system-x86_64")
		script := fmt.Sprintf(`#!/bin/sh
# Runs QEMU with the TCG translation cache set to %[1]d MiB.
for a; do shift; case $a in tcg,tb-size=*) a=tcg,tb-size=%[1]d;; esac; set -- "$@" "$a"; done
exec %[2]q "$@"
`, tb, real)
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			b.Fatal(err)
		}
		h := newHarness(b)
		h.env = append(h.env, "SBX_QEMU="+wrapper)
		ws := workspace(b)
		cold := []string{"--cold"}
		h.mustSbx(runArgs(append([]string{"--rm"}, cold...), "warm", ws, "true")...)
		var f figures
		var colds, bares []time.Duration
		for i := 0; i < 3; i++ {
			colds = append(colds, firstOutput(b, h, runArgs(cold, "cold"+strconv.Itoa(i), ws, "echo ready")...))
		}
		spec := readBoot(b, h)
		if spec.Accel == "kvm" {
			b.Skip("the sandboxes run under KVM: there is no TCG translation cache")
		}
		for i := 0; i < 2; i++ {
			d, rss := bareBoot(b, spec, tb)
			bares = append(bares, d)
			f.bareRSS = max(f.bareRSS, rss)
		}
		f.cold, f.bare = median(colds), median(bares)
		name := strings.TrimSpace(h.mustSbx("create", "--name", "idle", ws).stdout)
		if args := string(mustRead(b, fmt.Sprintf("/proc/%d/cmdline", qemuPID(b, sandboxID(b, h, name))))); !strings.Contains(args, "tb-size="+strconv.Itoa(tb)+"\x00") {
			b.Fatalf("the wrapper did not set tb-size=%d: %q", tb, args)
		}
		f.idleTotal, f.idle = idleMemory(b, h, name)
		f.workload = nanos(b, guestScript(b, h, name, tcgWorkload))[0]
		_, f.after = idleMemory(b, h, name)
		h.mustSbx("rm", "-f", name)
		b.Logf("tb-size=%d: cold start %v, bare boot %v (RSS %d MiB), idle beyond guest %d MiB (total %d MiB), after workload %d MiB, workload %v",
			tb, f.cold, f.bare, f.bareRSS/1024, f.idle/1024, f.idleTotal/1024, f.after/1024, f.workload)
		got[tb] = f
	}
	base := got[defaultTBSize]
	for _, tb := range sizes {
		f := got[tb]
		at := fmt.Sprintf(", tb-size=%d", tb)
		baseline := func(what string) string { return what + ", tb-size=" + strconv.Itoa(defaultTBSize) }
		report(b, benchResult{Name: "cold start" + at, Unit: "ms", Value: ms(f.cold), Baseline: baseline("cold start"), BaseVal: ms(base.cold)})
		report(b, benchResult{Name: "bare QEMU boot to /init" + at, Unit: "ms", Value: ms(f.bare), Baseline: baseline("bare boot"), BaseVal: ms(base.bare)})
		report(b, benchResult{Name: "idle sandbox beyond guest RAM" + at, Unit: "MiB", Value: float64(f.idle) / 1024, Baseline: baseline("idle"), BaseVal: float64(base.idle) / 1024})
		report(b, benchResult{Name: "idle after a workload, beyond guest RAM" + at, Unit: "MiB", Value: float64(f.after) / 1024, Baseline: baseline("after workload"), BaseVal: float64(base.after) / 1024})
		report(b, benchResult{Name: "guest workload" + at, Unit: "ms", Value: ms(f.workload), Baseline: baseline("workload"), BaseVal: ms(base.workload)})
	}
}

func mustRead(b *testing.B, path string) []byte {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	return data
}
