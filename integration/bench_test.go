package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/supervisor"
)

// A benchResult is one figure with the baseline measured in the same run.
type benchResult struct {
	Name     string  `json:"name"`
	Unit     string  `json:"unit"`
	Value    float64 `json:"value"`
	Baseline string  `json:"baseline"`
	BaseVal  float64 `json:"baselineValue"`
	Ratio    float64 `json:"ratio"`
	Target   string  `json:"target,omitempty"`
}

var (
	benchMu      sync.Mutex
	benchResults []benchResult
)

func report(b *testing.B, r benchResult) {
	if r.BaseVal > 0 {
		r.Ratio = r.Value / r.BaseVal
	}
	b.ReportMetric(r.Value, r.Unit)
	b.ReportMetric(r.Ratio, "x-baseline")
	b.Logf("%s: %.1f %s; baseline %s: %.1f %s; ratio %.2fx %s", r.Name, r.Value, r.Unit, r.Baseline, r.BaseVal, r.Unit, r.Ratio, r.Target)
	benchMu.Lock()
	benchResults = append(benchResults, r)
	benchMu.Unlock()
	writeBenchJSON()
}

// writeBenchJSON writes every result so far to $SBX_BENCH_JSON and prints
// the table.
func writeBenchJSON() {
	benchMu.Lock()
	defer benchMu.Unlock()
	path := os.Getenv("SBX_BENCH_JSON")
	if path == "" {
		return
	}
	data, _ := json.MarshalIndent(benchResults, "", "  ")
	_ = os.WriteFile(path, append(data, '\n'), 0o644)
}

// bootSpec is the part of a sandbox's boot.json the baselines reuse.
type bootSpec struct {
	QEMU   string `json:"qemu"`
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	TSCkHz int    `json:"tscKHz"`
}

func readBoot(b *testing.B, h *harness) bootSpec {
	matches, _ := filepath.Glob(filepath.Join(h.home, "sandboxes", "*", "boot.json"))
	if len(matches) == 0 {
		b.Fatal("no boot.json")
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		b.Fatal(err)
	}
	var s bootSpec
	if err := json.Unmarshal(data, &s); err != nil {
		b.Fatal(err)
	}
	return s
}

// bareBoot boots the kernel and initramfs alone under QEMU (same machine
// flags and kernel command line as sbx, TCG) and returns the time from
// QEMU start to the first line /init (the agent) prints, and QEMU's RSS at
// that point.
func bareBoot(b *testing.B, s bootSpec) (time.Duration, int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"-nodefaults", "-no-user-config", "-display", "none",
		"-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg,tb-size=256", "-cpu", "max", "-smp", "1", "-m", "2048M",
		"-kernel", s.Kernel, "-initrd", s.Initrd,
		"-append", supervisor.GuestCmdline + " tsc=reliable tsc_early_khz=" + strconv.Itoa(s.TSCkHz) + " lpj=4000000 no_timer_check",
		"-serial", "stdio", "-device", "virtio-rng-device"}
	cmd := exec.CommandContext(ctx, s.QEMU, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.HasPrefix(strings.TrimSpace(sc.Text()), "{") {
			took := time.Since(start)
			return took, rssKiB(cmd.Process.Pid)
		}
	}
	b.Fatalf("bare boot: /init printed nothing (%v)", sc.Err())
	return 0, 0
}

func rssKiB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// firstOutput runs sbx and returns the time until its first byte of stdout.
func firstOutput(b *testing.B, h *harness, args ...string) time.Duration {
	cmd := exec.Command(sbxBin, args...)
	cmd.Env = h.env
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1)
	_, err := out.Read(buf)
	took := time.Since(start)
	if err != nil {
		b.Fatalf("sbx %v: no output: %v", args, err)
	}
	if err := cmd.Wait(); err != nil {
		h.dumpLogs()
		b.Fatalf("sbx %v: %v", args, err)
	}
	return took
}

// BenchmarkColdStart: `sbx run` of a new sandbox to the first output of a
// command, against a bare QEMU boot of the same kernel and initramfs to the
// first line of /init.
func BenchmarkColdStart(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	// Warm the asset cache (kernel, initramfs, template) outside the timing.
	h.mustSbx("run", "--rm", "--name", "warm", "shell", ws, "--", "-c", "true")
	var runs, bares []time.Duration
	for i := 0; i < max(b.N, 3); i++ {
		name := "cold" + strconv.Itoa(i)
		runs = append(runs, firstOutput(b, h, "run", "--name", name, "shell", ws, "--", "-c", "echo ready"))
	}
	spec := readBoot(b, h)
	for i := 0; i < 3; i++ {
		d, _ := bareBoot(b, spec)
		bares = append(bares, d)
	}
	report(b, benchResult{
		Name: "cold start to first command output", Unit: "ms", Value: ms(median(runs)),
		Baseline: "bare QEMU boot to /init", BaseVal: ms(median(bares)), Target: "(aim: 1.5x or less)",
	})
}

// BenchmarkExecRoundTrip: `sbx exec SANDBOX true` on a running sandbox,
// against `sbx ls` (the cost of starting the CLI and reading the store).
func BenchmarkExecRoundTrip(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	name := strings.TrimSpace(h.mustSbx("create", "--name", "rt", ws).stdout)
	h.mustSbx("exec", name, "true")
	n := max(b.N, 20)
	timeIt := func(args ...string) time.Duration {
		var ds []time.Duration
		for i := 0; i < n; i++ {
			cmd := exec.Command(sbxBin, args...)
			cmd.Env = h.env
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("sbx %v: %v\n%s", args, err, out)
			}
			ds = append(ds, time.Since(start))
		}
		return median(ds)
	}
	execT := timeIt("exec", name, "true")
	lsT := timeIt("ls", "-q")
	report(b, benchResult{
		Name: "sbx exec true round trip", Unit: "ms", Value: ms(execT),
		Baseline: "sbx ls", BaseVal: ms(lsT), Target: "(aim: 30 ms or less)",
	})
}

// BenchmarkIdleMemory: host memory of an idle sandbox (QEMU + supervisor
// RSS) beyond the guest's own used memory, against the RSS of a bare QEMU
// booted to /init.
func BenchmarkIdleMemory(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	name := strings.TrimSpace(h.mustSbx("create", "--name", "mem", ws).stdout)
	time.Sleep(3 * time.Second) // let the guest settle
	id := ""
	for _, r := range h.ls() {
		if r.Name == name {
			id = r.ID
		}
	}
	qpid := qemuPID(b, id)
	var state struct {
		PID int `json:"pid"`
	}
	data, _ := os.ReadFile(filepath.Join(h.home, "sandboxes", id, "state.json"))
	json.Unmarshal(data, &state)
	used := h.mustSbx("exec", name, "sh", "-c", "awk '/MemTotal/{t=$2}/MemFree/{f=$2}END{print t-f}' /proc/meminfo").stdout
	guestUsed, _ := strconv.ParseInt(strings.TrimSpace(used), 10, 64)
	total := rssKiB(qpid) + rssKiB(state.PID)
	overhead := total - guestUsed
	_, bareRSS := bareBoot(b, readBoot(b, h))
	report(b, benchResult{
		Name: "host memory per idle sandbox beyond guest RAM", Unit: "MiB", Value: float64(overhead) / 1024,
		Baseline: "bare QEMU RSS at /init", BaseVal: float64(bareRSS) / 1024,
	})
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
