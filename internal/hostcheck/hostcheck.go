package hostcheck

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotFound is returned when a required host program is missing.
var ErrNotFound = errors.New("program not found")

var tscLineRE = regexp.MustCompile(`tsc: (?:Refined TSC clocksource calibration:|Detected) ([0-9]+\.[0-9]+) MHz`)

// TSCkHz returns the host's TSC frequency in kHz, for the tsc_early_khz=
// option TCG guests need. It prefers the kernel's own measurement from the
// kernel log ("tsc: Refined TSC clocksource calibration" over "tsc:
// Detected"), which may be unreadable without privileges, and falls back
// to the first "cpu MHz" of /proc/cpuinfo.
func TSCkHz() (int, error) {
	tscOnce.Do(func() {
		key := "tsc-khz " + hostBootID()
		if v, ok := fact(key); ok && hostBootID() != "" {
			if n, err := strconv.Atoi(v); err == nil && n >= 100_000 && n <= 10_000_000 {
				tscKHz = n
				return
			}
		}
		tscKHz, tscErr = readTSCkHz()
		if tscErr == nil && hostBootID() != "" {
			setFact(key, strconv.Itoa(tscKHz))
		}
	})
	return tscKHz, tscErr
}

// The TSC frequency is read once per process.
var (
	tscOnce sync.Once
	tscKHz  int
	tscErr  error
)

func readTSCkHz() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "dmesg").Output(); err == nil {
		if khz, ok := parseKernelLogTSC(out); ok {
			return khz, nil
		}
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read cpu frequency: %w", err)
	}
	if khz, ok := parseCPUInfoMHz(b); ok {
		return khz, nil
	}
	return 0, errors.New("no TSC frequency in the kernel log or /proc/cpuinfo")
}

// parseKernelLogTSC returns the refined calibration if present, else the
// detected frequency.
func parseKernelLogTSC(log []byte) (int, bool) {
	var detected, refined float64
	for _, m := range tscLineRE.FindAllSubmatch(log, -1) {
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil || v <= 0 {
			continue
		}
		if bytes.Contains(m[0], []byte("Refined")) {
			refined = v
		} else if detected == 0 {
			detected = v
		}
	}
	switch {
	case refined > 0:
		return int(math.Round(refined * 1000)), true
	case detected > 0:
		return int(math.Round(detected * 1000)), true
	}
	return 0, false
}

func parseCPUInfoMHz(b []byte) (int, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err == nil && f > 0 {
			return int(math.Round(f * 1000)), true
		}
	}
	return 0, false
}

var qemuVersionRE = regexp.MustCompile(`version ([0-9][0-9.]*)`)

// QEMU finds qemu-system-x86_64 on PATH and returns its path and version
// (e.g. "7.2.19"). A missing binary gives an error wrapping ErrNotFound
// with the command that installs it; one Program refuses (avoid are the
// workspaces) is not run.
func QEMU(ctx context.Context, avoid []string) (path, version string, err error) {
	return findVersioned(ctx, "qemu-system-x86_64", "qemu-system-x86", avoid)
}

// QEMUImg finds qemu-img on PATH and checks that it runs, as QEMU does.
func QEMUImg(ctx context.Context, avoid []string) (path string, err error) {
	p, _, err := findVersioned(ctx, "qemu-img", "qemu-utils", avoid)
	return p, err
}

// QEMUVersion returns the version of the QEMU binary at path. The answer
// is remembered for the life of the process, by path, size and mtime.
func QEMUVersion(ctx context.Context, path string) (string, error) {
	var key string
	if st, err := os.Stat(path); err == nil {
		var ino uint64
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			ino = sys.Ino
		}
		key = fmt.Sprintf("version %s %d %d %d", path, st.Size(), st.ModTime().UnixNano(), ino)
		if v, ok := qemuVersions.Load(key); ok {
			return v.(string), nil
		}
		if v, ok := fact(key); ok && v != "" {
			qemuVersions.Store(key, v)
			return v, nil
		}
	}
	v, err := runQEMUVersion(ctx, path)
	if err == nil && key != "" {
		qemuVersions.Store(key, v)
		setFact(key, v)
	}
	return v, err
}

var qemuVersions sync.Map // path, size, mtime -> version

func runQEMUVersion(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w", path, err)
	}
	m := qemuVersionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no version in the output of %s --version", path)
	}
	return string(m[1]), nil
}

func findVersioned(ctx context.Context, prog, debPkg string, avoid []string) (string, string, error) {
	p, err := exec.LookPath(prog)
	if err != nil {
		return "", "", fmt.Errorf("%w: %s is not installed (Debian/Ubuntu: apt-get install %s)", ErrNotFound, prog, debPkg)
	}
	if p, err = Program(p, avoid); err != nil {
		return "", "", err
	}
	v, err := QEMUVersion(ctx, p)
	return p, v, err
}

// DiskFree returns the bytes available to an unprivileged user on the file
// system holding path.
func DiskFree(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
