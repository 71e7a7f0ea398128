package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestE2BSDK: the unmodified E2B JavaScript SDK, pinned by the committed
// lock file (test/e2b), installed into a temp folder and pointed at `sbx
// daemon` with only E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY, runs
// test/e2b/probe.mjs against real sandboxes: create (named and default
// template), connect, list, timeouts, commands with streamed output and
// exit codes, background commands and kill, files write/read/list/
// makeDir/exists/remove, kill.
func TestE2BSDK(t *testing.T) {
	h := newHarness(t)
	npm, err := exec.LookPath("npm")
	if err != nil {
		if os.Getenv("SBX_TEST_REQUIRE_VM") == "1" {
			t.Fatal("the E2B SDK test needs npm (apt-get install npm) (SBX_TEST_REQUIRE_VM=1)")
		}
		t.Skip("the E2B SDK test needs npm and node (apt-get install npm)")
	}
	dir := t.TempDir()
	for _, f := range []string{"package.json", "package-lock.json", "probe.mjs"} {
		b, err := os.ReadFile(filepath.Join("..", "test", "e2b", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm ci of the pinned SDK: %v\n%s", err, out)
	}
	const token = "e2b-test-token-0123456789abcdef"
	_, addr, _ := startDaemon(t, h, token)
	probe := exec.CommandContext(ctx, "node", "probe.mjs")
	probe.Dir = dir
	probe.Env = append(os.Environ(), "E2B_API_URL=http://"+addr, "E2B_SANDBOX_URL=http://"+addr, "E2B_API_KEY="+token)
	out, err := probe.CombinedOutput()
	t.Logf("probe.mjs:\n%s", out)
	if err != nil || !strings.Contains(string(out), "ALL OK") {
		t.Fatalf("the E2B SDK probe failed: %v", err)
	}
	// Every sandbox it made is gone (kill), and so are their workspaces.
	if rows := h.ls(); len(rows) != 0 {
		t.Errorf("sandboxes left: %+v", rows)
	}
}
