// Package integration drives the built sbx binary against real QEMU, as a
// user would: each test gets its own SBX_HOME in a temporary folder and
// shares the asset cache (kernel, initramfs, templates).
//
// The VM tests skip with a hint when QEMU or root (for the first template
// build) is missing, and fail instead when SBX_TEST_REQUIRE_VM=1, as in CI.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

var (
	binDir   string // holds sbx and sbx-agent
	sbxBin   string
	buildErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sbx-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	sbxBin = filepath.Join(dir, "sbx")
	buildErr = build(dir)
	code := m.Run()
	printBenchTable(os.Stdout) // only when benchmarks reported figures
	os.RemoveAll(dir)
	os.Exit(code)
}

func build(dir string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	for _, b := range []struct{ out, pkg string }{
		{"sbx-agent", "./cmd/sbx-agent"},
		{"sbx", "./cmd/sbx"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	// git runs sbx as its remote helper under this name (make build makes
	// the same link).
	return os.Symlink("sbx", filepath.Join(dir, "git-remote-sbx"))
}

// requireVM skips (or, with SBX_TEST_REQUIRE_VM=1, fails) when this machine
// cannot boot sandboxes.
func requireVM(t testing.TB) {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	var missing []string
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		missing = append(missing, "qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		missing = append(missing, "qemu-img (apt-get install qemu-utils)")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		missing = append(missing, "debootstrap (apt-get install debootstrap)")
	} else if os.Getuid() != 0 {
		missing = append(missing, "root, to build the default template with debootstrap")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		missing = append(missing, "mkfs.ext4 (apt-get install e2fsprogs)")
	}
	if os.Getenv("SBX_KERNEL") == "" {
		if _, err := exec.LookPath("apt-get"); err != nil {
			missing = append(missing, "a guest kernel: apt-get to fetch Debian's linux-image-amd64, or SBX_KERNEL")
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "VM tests need: " + strings.Join(missing, ", ")
	if os.Getenv("SBX_TEST_REQUIRE_VM") == "1" {
		t.Fatal(msg + " (SBX_TEST_REQUIRE_VM=1)")
	}
	t.Skip(msg)
}

// harness runs sbx with its own SBX_HOME.
type harness struct {
	t    testing.TB
	home string
	env  []string
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	requireVM(t)
	home := t.TempDir()
	h := &harness{t: t, home: home}
	h.env = append(os.Environ(), "SBX_HOME="+home)
	t.Cleanup(func() {
		res := h.sbx("rm", "-f", "--all")
		if res.code != 0 {
			t.Logf("cleanup: sbx rm -f --all: %s", res.stderr)
		}
	})
	return h
}

type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (h *harness) sbx(args ...string) result {
	h.t.Helper()
	return h.sbxIn("", args...)
}

// sbxIn runs sbx with stdin.
func (h *harness) sbxIn(stdin string, args ...string) result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sbxBin, args...)
	cmd.Env = h.env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	start := time.Now()
	err := cmd.Run()
	res := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		res.code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatalf("sbx %s: %v", strings.Join(args, " "), err)
	}
	h.t.Logf("sbx %s -> %d in %s", strings.Join(args, " "), res.code, res.took.Round(time.Millisecond))
	return res
}

// mustSbx runs sbx and fails the test on a non-zero exit, logging the
// sandbox logs to help.
func (h *harness) mustSbx(args ...string) result {
	h.t.Helper()
	res := h.sbx(args...)
	if res.code != 0 {
		h.dumpLogs()
		h.t.Fatalf("sbx %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	return res
}

// dumpLogs sends every sandbox's console and supervisor log to t.Log.
func (h *harness) dumpLogs() {
	h.t.Helper()
	matches, _ := filepath.Glob(filepath.Join(h.home, "sandboxes", "*", "*.log"))
	for _, m := range matches {
		data, _ := os.ReadFile(m)
		if len(data) > 8000 {
			data = data[len(data)-8000:]
		}
		h.t.Logf("==> %s <==\n%s", m, data)
	}
}

// workspace makes a temporary workspace owned by the uid the guest user
// takes, as a user's own project folder would be.
func workspace(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if os.Getuid() == 0 {
		if err := os.Chown(dir, wantUID(), wantUID()); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
