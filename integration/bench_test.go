package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// A benchResult is one figure with the baseline measured in the same run.
// Diagnostics without a baseline have an empty Baseline and a zero Ratio.
type benchResult struct {
	Name     string  `json:"name"`
	Unit     string  `json:"unit"`
	Value    float64 `json:"value"`
	Baseline string  `json:"baseline,omitempty"`
	BaseVal  float64 `json:"baselineValue"`
	Ratio    float64 `json:"ratio"`
	Aim      string  `json:"aim,omitempty"`
}

var (
	benchMu      sync.Mutex
	benchResults []benchResult
	benchAccel   string // the accelerator the sandboxes used (from boot.json)
)

func report(b *testing.B, r benchResult) {
	b.Helper()
	if r.BaseVal > 0 {
		r.Ratio = r.Value / r.BaseVal
	}
	b.ReportMetric(r.Value, strings.ReplaceAll(r.Unit, " ", "_"))
	if r.Baseline != "" {
		b.ReportMetric(r.Ratio, "x-baseline")
		b.Logf("%s: %s %s; baseline %s: %s %s; ratio %.2fx %s", r.Name, num(r.Value), r.Unit, r.Baseline, num(r.BaseVal), r.Unit, r.Ratio, r.Aim)
	} else {
		b.Logf("%s: %s %s (diagnostic, no baseline) %s", r.Name, num(r.Value), r.Unit, r.Aim)
	}
	benchMu.Lock()
	benchResults = append(benchResults, r)
	benchMu.Unlock()
	writeBenchJSON()
}

// writeBenchJSON writes every result so far to $SBX_BENCH_JSON, so a run
// cut short still leaves the figures it measured.
func writeBenchJSON() {
	benchMu.Lock()
	defer benchMu.Unlock()
	path := os.Getenv("SBX_BENCH_JSON")
	if path == "" {
		return
	}
	out := struct {
		Machine machineInfo   `json:"machine"`
		Results []benchResult `json:"results"`
	}{machine(), benchResults}
	data, _ := json.MarshalIndent(out, "", "  ")
	_ = os.WriteFile(path, append(data, '\n'), 0o644)
}

// machineInfo describes the host the figures were measured on.
type machineInfo struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	MemMiB int64  `json:"memMiB"`
	Accel  string `json:"accel"`
	Date   string `json:"date"`
}

func machine() machineInfo {
	m := machineInfo{CPUs: runtime.NumCPU(), Accel: benchAccel, Date: time.Now().UTC().Format(time.RFC3339)}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kib, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemMiB = kib / 1024
			}
		}
	}
	return m
}

// printBenchTable prints every figure of this run as a plain table, with
// its baseline and ratio. TestMain calls it after the benchmarks ran.
func printBenchTable(w io.Writer) {
	benchMu.Lock()
	defer benchMu.Unlock()
	if len(benchResults) == 0 {
		return
	}
	m := machine()
	accel := m.Accel
	if accel == "" {
		accel = "?"
	}
	fmt.Fprintf(w, "\nsbx benchmarks: %d CPUs, %s, %d MiB RAM, accel %s\n", m.CPUs, m.CPU, m.MemMiB, accel)
	rows := [][]string{{"figure", "value", "baseline", "baseline value", "ratio", "aim"}}
	for _, r := range benchResults {
		base, baseVal, ratio := "-", "-", "-"
		if r.Baseline != "" {
			base, baseVal = r.Baseline, num(r.BaseVal)+" "+r.Unit
			ratio = fmt.Sprintf("%.2fx", r.Ratio)
		}
		aim := r.Aim
		if aim == "" {
			aim = "-"
		}
		rows = append(rows, []string{r.Name, num(r.Value) + " " + r.Unit, base, baseVal, ratio, aim})
	}
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			widths[i] = max(widths[i], len(c))
		}
	}
	for i, row := range rows {
		cells := make([]string, len(row))
		for j, c := range row {
			cells[j] = c + strings.Repeat(" ", widths[j]-len(c))
		}
		fmt.Fprintln(w, strings.TrimRight(strings.Join(cells, " | "), " "))
		if i == 0 {
			seps := make([]string, len(row))
			for j := range seps {
				seps[j] = strings.Repeat("-", widths[j])
			}
			fmt.Fprintln(w, strings.Join(seps, "-|-"))
		}
	}
	if p := os.Getenv("SBX_BENCH_JSON"); p != "" {
		fmt.Fprintf(w, "(also in %s)\n", p)
	}
}

// num formats a figure with a precision that suits its size.
func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100 || a == math.Trunc(a):
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// bootSpec is the part of a sandbox's boot.json the baselines reuse.
type bootSpec struct {
	QEMU   string `json:"qemu"`
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	Accel  string `json:"accel"`
	TSCkHz int    `json:"tscKHz"`
}

func readBoot(b *testing.B, h *harness) bootSpec {
	b.Helper()
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
	benchMu.Lock()
	benchAccel = s.Accel
	benchMu.Unlock()
	return s
}

// defaultTBSize is the translation cache (MiB) sbx gives QEMU under TCG
// (internal/vm/qemu machineArgs).
const defaultTBSize = 256

// bareBoot boots the kernel and initramfs alone under QEMU (same machine
// flags and kernel command line as sbx: TCG with a translation cache of tbMiB, or KVM when the
// sandboxes used it) and returns the time
// from QEMU start to the first line /init (the agent) prints, and QEMU's
// RSS in KiB at that point.
func bareBoot(b *testing.B, s bootSpec, tbMiB int) (time.Duration, int64) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	machine := []string{"-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg,tb-size=" + strconv.Itoa(tbMiB), "-cpu", "max", "-smp", "1"}
	cmdline := supervisor.GuestCmdline + " tsc=reliable tsc_early_khz=" + strconv.Itoa(s.TSCkHz) + " lpj=4000000 no_timer_check"
	if s.Accel == "kvm" { // the sandboxes use KVM: so does the baseline
		machine = []string{"-M", "microvm,rtc=on", "-accel", "kvm", "-cpu", "host", "-smp", "2"}
		cmdline = supervisor.GuestCmdline
	}
	args := append([]string{"-nodefaults", "-no-user-config", "-display", "none"}, machine...)
	args = append(args, "-m", "2048M", "-kernel", s.Kernel, "-initrd", s.Initrd, "-append", cmdline,
		"-serial", "stdio", "-device", "virtio-rng-device")
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

// rssKiB is the resident set size of process pid.
func rssKiB(pid int) int64 { return procKiB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") }

// pssKiB is the proportional set size of process pid.
func pssKiB(pid int) int64 { return procKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:") }

// procKiB reads the "FIELD: N kB" line of a /proc file.
func procKiB(path, field string) int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, field) {
			f := strings.Fields(l)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// firstOutput runs sbx and returns the time until its first byte of stdout.
func firstOutput(b *testing.B, h *harness, args ...string) time.Duration {
	b.Helper()
	cmd := exec.Command(sbxBin, args...)
	cmd.Env = h.env
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1)
	_, err := out.Read(buf)
	took := time.Since(start)
	if err != nil {
		cmd.Wait()
		h.dumpLogs()
		b.Fatalf("sbx %v: no output: %v\n%s", args, err, stderr.String())
	}
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		h.dumpLogs()
		b.Fatalf("sbx %v: %v\n%s", args, err, stderr.String())
	}
	return took
}

// runArgs is `sbx run [flags] --name NAME shell WS -- -c CMD`.
func runArgs(flags []string, name, ws, command string) []string {
	a := append([]string{"run"}, flags...)
	return append(a, "--name", name, "shell", ws, "--", "-c", command)
}

// BenchmarkColdStart: `sbx run --cold` of a new sandbox to the first output
// of a command, against a bare QEMU boot of the same kernel and initramfs
// to the first line of /init.
func BenchmarkColdStart(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	cold := []string{"--cold"}
	// Warm the asset cache (kernel, initramfs, template) outside the timing.
	h.mustSbx(runArgs(append([]string{"--rm"}, cold...), "warm", ws, "true")...)
	var runs, bares []time.Duration
	for i := 0; i < max(b.N, 3); i++ {
		runs = append(runs, firstOutput(b, h, runArgs(cold, "cold"+strconv.Itoa(i), ws, "echo ready")...))
	}
	spec := readBoot(b, h)
	for i := 0; i < 3; i++ {
		d, _ := bareBoot(b, spec, defaultTBSize)
		bares = append(bares, d)
	}
	report(b, benchResult{
		Name: "cold start to first command output", Unit: "ms", Value: ms(median(runs)),
		Baseline: "bare QEMU boot to /init", BaseVal: ms(median(bares)), Aim: "<= 1.5x",
	})
}

// BenchmarkSnapshotStart: `sbx run` of a new sandbox, which starts from the
// pre-booted snapshot of its template, to the first output of a command,
// against the same with --cold. Warm-up runs first build the snapshot (on
// first use) outside the timing.
func BenchmarkSnapshotStart(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	h.mustSbx(runArgs([]string{"--rm", "--cold"}, "warm-cold", ws, "true")...)
	for i := 0; i < 2; i++ {
		h.mustSbx(runArgs([]string{"--rm"}, "warm-snap"+strconv.Itoa(i), ws, "true")...)
	}
	var snaps, colds []time.Duration
	for i := 0; i < max(b.N, 3); i++ {
		snaps = append(snaps, firstOutput(b, h, runArgs(nil, "snap"+strconv.Itoa(i), ws, "echo ready")...))
		colds = append(colds, firstOutput(b, h, runArgs([]string{"--cold"}, "cold"+strconv.Itoa(i), ws, "echo ready")...))
	}
	readBoot(b, h)
	b.Logf("snapshot starts %v; cold starts %v", snaps, colds)
	report(b, benchResult{
		Name: "snapshot start to first command output", Unit: "ms", Value: ms(median(snaps)),
		Baseline: "cold start (--cold)", BaseVal: ms(median(colds)), Aim: "<= 0.1x and < 500 ms",
	})
}

// sandboxID returns the id of the sandbox called name.
func sandboxID(b testing.TB, h *harness, name string) string {
	b.Helper()
	for _, r := range h.ls() {
		if r.Name == name {
			return r.ID
		}
	}
	b.Fatalf("sandbox %s not in ls", name)
	return ""
}

// BenchmarkExecRoundTrip: `sbx exec SANDBOX true` on a running sandbox,
// against `sbx ls` (the cost of starting the CLI and reading the store).
// A second figure leaves the CLI out: an exec of true over the control
// socket from this process (stream upgrade, agent exec, exit status),
// against a status request on the same socket (the supervisor alone).
func BenchmarkExecRoundTrip(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	name := strings.TrimSpace(h.mustSbx("create", "--name", "rt", ws).stdout)
	h.mustSbx("exec", name, "true")
	readBoot(b, h)
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
		Baseline: "sbx ls", BaseVal: ms(lsT), Aim: "<= 30 ms",
	})

	// The same without the CLI: what the supervisor and the guest cost.
	dirs, err := paths.Resolve()
	if err != nil {
		b.Fatal(err)
	}
	ctl := controlapi.NewClient(filepath.Join(dirs.RuntimeDir(sandboxID(b, h, name)), "control.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var execs, stats []time.Duration
	for i := 0; i < n*5; i++ {
		start := time.Now()
		stream, err := ctl.OpenStream(ctx, false)
		if err != nil {
			b.Fatal(err)
		}
		st, err := agentclient.Exec(ctx, stream, agentapi.ExecRequest{Argv: []string{"true"}}, agentclient.ExecIO{})
		if err != nil || st.Code != 0 {
			b.Fatalf("exec true over the control socket: %+v %v", st, err)
		}
		execs = append(execs, time.Since(start))
		start = time.Now()
		if _, err := ctl.Status(ctx); err != nil {
			b.Fatal(err)
		}
		stats = append(stats, time.Since(start))
	}
	report(b, benchResult{
		Name: "exec true over the control socket (no CLI)", Unit: "ms", Value: ms(median(execs)),
		Baseline: "status request on the control socket", BaseVal: ms(median(stats)),
	})
}

// BenchmarkIdleMemory: host memory of an idle sandbox (QEMU + supervisor,
// proportional set size: pages shared between sandboxes are split among
// them) beyond the guest's own used memory, for three sandboxes started
// from one snapshot (their RAM is a copy-on-write mapping of the
// snapshot's), against one booted cold; and how many idle sandboxes fit
// in 8 GiB of host memory, the same two ways.
func BenchmarkIdleMemory(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	h.mustSbx("create", "--cold", "--name", "mem-cold", ws)
	coldTotal, coldOver := idleMemory(b, h, "mem-cold")
	h.mustSbx("stop", "mem-cold")
	var names []string
	for i := range 3 {
		name := "mem" + strconv.Itoa(i)
		h.mustSbx("create", "--name", name, ws)
		names = append(names, name)
	}
	var total, over int64
	for _, n := range names {
		t, o := idleMemory(b, h, n)
		total += t
		over += o
	}
	total /= int64(len(names))
	over /= int64(len(names))
	report(b, benchResult{
		Name: "host memory per idle sandbox beyond guest RAM (snapshot starts, 3 running)", Unit: "MiB", Value: float64(over) / 1024,
		Baseline: "the same for a cold-booted sandbox", BaseVal: float64(coldOver) / 1024, Aim: "<= 64 MiB",
	})
	report(b, benchResult{
		Name: "idle sandboxes per 8 GiB of host memory (snapshot starts)", Unit: "sandboxes", Value: per8GiB(total),
		Baseline: "cold-booted sandboxes per 8 GiB", BaseVal: per8GiB(coldTotal),
	})
}

// idleMemory lets a running sandbox settle and returns the host memory
// (KiB, proportional set size) of its QEMU and supervisor together, and
// that minus the memory the guest itself uses (MemTotal - MemFree).
func idleMemory(b *testing.B, h *harness, name string) (total, overhead int64) {
	b.Helper()
	time.Sleep(3 * time.Second) // let the guest settle
	id := sandboxID(b, h, name)
	qpid := qemuPID(b, id)
	var state struct {
		PID int `json:"pid"`
	}
	data, _ := os.ReadFile(filepath.Join(h.home, "sandboxes", id, "state.json"))
	json.Unmarshal(data, &state)
	used := h.mustSbx("exec", name, "sh", "-c", "awk '/MemTotal/{t=$2}/MemFree/{f=$2}END{print t-f}' /proc/meminfo").stdout
	guestUsed, _ := strconv.ParseInt(strings.TrimSpace(used), 10, 64)
	q, s := pssKiB(qpid), pssKiB(state.PID)
	b.Logf("idle %s: QEMU PSS %d MiB (RSS %d MiB), supervisor PSS %d MiB, guest uses %d MiB", name, q/1024, rssKiB(qpid)/1024, s/1024, guestUsed/1024)
	return q + s, q + s - guestUsed
}

// per8GiB is how many processes of rss KiB fit in 8 GiB.
func per8GiB(rssKiB int64) float64 {
	if rssKiB <= 0 {
		return 0
	}
	return math.Floor(8 * 1024 * 1024 / float64(rssKiB))
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
