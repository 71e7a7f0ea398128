package hostcheck

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cavaliergopher/cpio"
)

// KVMProbeTimeout bounds the probe boot. A guest under working KVM reaches
// /init in well under a second; where KVM is broken (nested hosts that
// offer only PVM) QEMU aborts at once or the guest hangs.
const KVMProbeTimeout = 15 * time.Second

// kvmMarker is what the kernel prints when it is about to run the
// initramfs's /init: reaching it proves the CPU, memory and timer setup
// work under KVM. It is printed at KERN_INFO, so the probe's command line
// has no "quiet".
const kvmMarker = "Run /init as init process"

const devKVM = "/dev/kvm"

// kvmProbeFile is <cacheDir>/kvm-probe.json.
type kvmProbeFile struct {
	Version int                       `json:"version"`
	Results map[string]kvmProbeResult `json:"results"`
}

type kvmProbeResult struct {
	Usable bool      `json:"usable"`
	Reason string    `json:"reason"`
	Probed time.Time `json:"probed"`
}

// KVMUsable reports whether QEMU (the binary qemu, or qemu-system-x86_64
// from PATH when qemu is empty) can really boot a guest with -accel kvm
// here. It returns false at once, with the reason, when /dev/kvm is
// missing or cannot be opened. Otherwise it boots kernelPath (with
// initrdPath, or a tiny generated initramfs when initrdPath is empty)
// under `-M microvm -accel kvm -cpu host` and waits up to KVMProbeTimeout
// for the kernel to run /init, then kills QEMU. The answer is cached in
// <cacheDir>/kvm-probe.json, keyed by the host kernel release, the QEMU
// version and the probed kernel (path, size, mtime), so later calls are
// instant. err is non-nil only when the probe could not be run (no QEMU,
// ctx cancelled, cache dir unwritable); a false answer is not an error.
func KVMUsable(ctx context.Context, cacheDir, qemu, kernelPath, initrdPath string) (usable bool, reason string, err error) {
	f, err := os.OpenFile(devKVM, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, "/dev/kvm does not exist (no hardware virtualisation or the kvm module is not loaded)", nil
		}
		return false, fmt.Sprintf("cannot open /dev/kvm: %v (add your user to the kvm group)", err), nil
	}
	f.Close()
	var qver string
	if qemu == "" {
		qemu, qver, err = QEMU(ctx, nil)
	} else {
		qver, err = QEMUVersion(ctx, qemu)
	}
	if err != nil {
		return false, "", err
	}
	kst, err := os.Stat(kernelPath)
	if err != nil {
		return false, "", fmt.Errorf("kvm probe kernel: %w", err)
	}
	key := fmt.Sprintf("host=%s qemu=%s:%s kernel=%s:%d:%d", hostRelease(), qemu, qver, kernelPath, kst.Size(), kst.ModTime().UnixNano())
	cachePath := filepath.Join(cacheDir, "kvm-probe.json")
	cache := readProbeCache(cachePath)
	if r, ok := cache.Results[key]; ok {
		return r.Usable, r.Reason, nil
	}

	if initrdPath == "" {
		dir, err := os.MkdirTemp("", "sbx-kvm-probe-")
		if err != nil {
			return false, "", fmt.Errorf("kvm probe temp dir: %w", err)
		}
		defer os.RemoveAll(dir)
		initrdPath = filepath.Join(dir, "initrd.cpio")
		if err := writeProbeInitramfs(initrdPath); err != nil {
			return false, "", err
		}
	}
	usable, reason, err = probeBoot(ctx, qemu, KVMProbeArgs(kernelPath, initrdPath), KVMProbeTimeout)
	if err != nil {
		return false, "", err
	}
	cache.Results[key] = kvmProbeResult{Usable: usable, Reason: reason, Probed: time.Now().UTC()}
	if err := writeProbeCache(cachePath, cache); err != nil {
		return usable, reason, err
	}
	return usable, reason, nil
}

// KVMProbeArgs is the QEMU command line of the probe boot (after the
// program name).
func KVMProbeArgs(kernelPath, initrdPath string) []string {
	return []string{
		"-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "stdio",
		"-kernel", kernelPath, "-initrd", initrdPath,
		"-append", "console=ttyS0 earlyprintk=ttyS0 loglevel=7 panic=-1",
	}
}

// probeBoot runs qemu with args and waits up to timeout for kvmMarker on
// its stdout. QEMU is killed before it returns.
func probeBoot(ctx context.Context, qemu string, args []string, timeout time.Duration) (bool, string, error) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(pctx, qemu, args...)
	cmd.Stdin = nil
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return false, "", fmt.Errorf("kvm probe: %w", err)
	}
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return false, "", fmt.Errorf("start qemu for kvm probe: %w", err)
	}
	found := make(chan struct{})
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), kvmMarker) {
				close(found)
				signalled = true
			}
		}
	}()
	exited := make(chan error, 1)
	go func() {
		<-scanDone
		exited <- cmd.Wait()
	}()

	select {
	case <-found:
		cancel()
		<-exited
		return true, fmt.Sprintf("guest reached /init under KVM in %.1fs", time.Since(start).Seconds()), nil
	case err := <-exited:
		select {
		case <-found:
			return true, fmt.Sprintf("guest reached /init under KVM in %.1fs", time.Since(start).Seconds()), nil
		default:
		}
		if ctx.Err() != nil {
			return false, "", fmt.Errorf("kvm probe: %w", ctx.Err())
		}
		if pctx.Err() != nil {
			return false, fmt.Sprintf("guest did not reach /init under KVM within %s (the host's KVM cannot run this guest; nested hosts often can't)", timeout), nil
		}
		msg := lastLine(stderr.String())
		if msg == "" && err != nil {
			msg = err.Error()
		}
		return false, fmt.Sprintf("qemu exited under KVM before the guest ran /init: %s", msg), nil
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// writeProbeInitramfs writes a cpio whose /init is a script that cannot
// run (there is no shell): the kernel prints the marker before it tries.
func writeProbeInitramfs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create probe initramfs: %w", err)
	}
	defer f.Close()
	w := cpio.NewWriter(f)
	body := []byte("#!/bin/sh\n")
	if err := w.WriteHeader(&cpio.Header{Name: "init", Mode: cpio.TypeReg | 0o755, Size: int64(len(body))}); err != nil {
		return fmt.Errorf("write probe initramfs: %w", err)
	}
	if _, err := w.Write(body); err != nil {
		return fmt.Errorf("write probe initramfs: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("write probe initramfs: %w", err)
	}
	return f.Close()
}

func hostRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		var uts syscall.Utsname
		if syscall.Uname(&uts) != nil {
			return "unknown"
		}
		var s []byte
		for _, c := range uts.Release {
			if c == 0 {
				break
			}
			s = append(s, byte(c))
		}
		return string(s)
	}
	return strings.TrimSpace(string(b))
}

func readProbeCache(path string) kvmProbeFile {
	c := kvmProbeFile{Version: 1, Results: map[string]kvmProbeResult{}}
	b, err := os.ReadFile(path)
	if err != nil {
		return c
	}
	var got kvmProbeFile
	if json.Unmarshal(b, &got) == nil && got.Version == 1 && got.Results != nil {
		return got
	}
	return c
}

func writeProbeCache(path string, c kvmProbeFile) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode kvm probe cache: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write kvm probe cache: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-kvm-probe-*")
	if err != nil {
		return fmt.Errorf("write kvm probe cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write kvm probe cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write kvm probe cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write kvm probe cache: %w", err)
	}
	return nil
}
