package hostcheck

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseKernelLogTSC(t *testing.T) {
	tests := []struct {
		log  string
		want int
		ok   bool
	}{
		{"[    0.000076] tsc: Detected 2445.432 MHz processor\n", 2445432, true},
		{"[0.0] tsc: Detected 2400.000 MHz processor\n[1.2] tsc: Refined TSC clocksource calibration: 2399.999 MHz\n", 2399999, true},
		{"[0.1] clocksource: tsc: mask: 0xffffffffffffffff\n", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseKernelLogTSC([]byte(tt.log))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseKernelLogTSC(%q) = %d, %v; want %d, %v", tt.log, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseCPUInfoMHz(t *testing.T) {
	got, ok := parseCPUInfoMHz([]byte("processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2596.0004\ncache size\t: 1 KB\n"))
	if !ok || got != 2596000 {
		t.Errorf("parseCPUInfoMHz = %d, %v; want 2596000, true", got, ok)
	}
	if _, ok := parseCPUInfoMHz([]byte("processor : 0\n")); ok {
		t.Error("no cpu MHz line: ok")
	}
}

func TestTSCkHzHere(t *testing.T) {
	khz, err := TSCkHz()
	if err != nil {
		// TCG guests need it on x86; VM test machines must have it.
		if os.Getenv("SBX_TEST_REQUIRE_VM") == "1" && runtime.GOARCH == "amd64" {
			t.Fatalf("no TSC frequency on this host (SBX_TEST_REQUIRE_VM=1): %v", err)
		}
		t.Skipf("no TSC frequency on this host: %v", err)
	}
	if khz < 100_000 || khz > 10_000_000 {
		t.Errorf("TSCkHz = %d, not a plausible CPU frequency", khz)
	}
}

func fakeQEMU(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestProbeBoot(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   bool
		reason string
	}{
		{"boots", "echo '[    0.9] Run /init as init process'; exec sleep 30", true, "reached /init"},
		{"aborts", "echo 'qemu: kvm.c:3183: kvm_buf_set_msrs: Assertion failed.' >&2; exit 134", false, "kvm_buf_set_msrs"},
		{"hangs", "echo 'Linux version 6.1'; exec sleep 30", false, "did not reach /init"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got, reason, err := probeBoot(t.Context(), fakeQEMU(t, tt.script), nil, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || !strings.Contains(reason, tt.reason) {
				t.Errorf("probeBoot = %v, %q; want %v, ...%q...", got, reason, tt.want, tt.reason)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("probe took %s, past its timeout", d)
			}
		})
	}
}

func TestKVMProbeCacheRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kvm-probe.json")
	c := readProbeCache(p)
	c.Results["k"] = kvmProbeResult{Usable: false, Reason: "r"}
	if err := writeProbeCache(p, c); err != nil {
		t.Fatal(err)
	}
	if got := readProbeCache(p).Results["k"]; got.Reason != "r" || got.Usable {
		t.Errorf("round trip = %+v", got)
	}
}

func TestDiskFree(t *testing.T) {
	n, err := DiskFree(t.TempDir())
	if err != nil || n == 0 {
		t.Errorf("DiskFree = %d, %v", n, err)
	}
	if _, err := DiskFree(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing path: no error")
	}
}

func TestQEMUMissingHint(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, _, err := QEMU(t.Context(), nil)
	if err == nil || !strings.Contains(err.Error(), "apt-get install qemu-system-x86") {
		t.Errorf("QEMU() with empty PATH = %v; want an install hint", err)
	}
}
