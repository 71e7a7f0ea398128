package integration

import (
	"strings"
	"testing"
)

// TestBadInput: mistakes get one clear line on stderr and a non-zero exit,
// never a Go stack trace. These need no VM.
func TestBadInput(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	h := &harness{t: t, home: t.TempDir()}
	h.env = append(h.env, "SBX_HOME="+h.home, "PATH=/usr/bin:/bin", "HOME="+h.home)
	ws := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"exec", "nope", "true"}, `no sandbox named "nope"`},
		{[]string{"stop", "nope"}, `no sandbox named "nope"`},
		{[]string{"run", "--name", "-bad", "shell", ws}, "invalid sandbox name"},
		{[]string{"run", "--name", "a", "shell", ws}, "invalid sandbox name"},
		{[]string{"run", "shell", "/does/not/exist"}, "does not exist"},
		{[]string{"run", "not-an-agent-or-path"}, "is not an agent, a sandbox or a folder"},
		{[]string{"run", "-m", "lots", "shell", ws}, "--memory"},
		// Eighth review: QEMU failed at start, leaving a crashed sandbox.
		{[]string{"create", "-m", "99999999g", "shell", ws}, "more than this machine's memory"},
		{[]string{"exec", "nope", "--"}, "no command after --"},
		{[]string{"run", "--accel", "warp", "shell", ws}, "--accel"},
		{[]string{"run", "shell", "/"}, "holds sbx's state folder"},
		{[]string{"cp", "a", "b"}, "names a sandbox"},
		{[]string{"rm"}, "name at least one sandbox"},
	}
	for _, c := range cases {
		res := h.sbx(c.args...)
		if res.code == 0 {
			t.Errorf("sbx %v: exit 0, want failure", c.args)
		}
		if !strings.Contains(res.stderr, c.want) {
			t.Errorf("sbx %v: stderr %q lacks %q", c.args, res.stderr, c.want)
		}
		if strings.Contains(res.stderr, "goroutine ") || strings.Contains(res.stderr, "panic") {
			t.Errorf("sbx %v: stack trace on stderr:\n%s", c.args, res.stderr)
		}
		if res.stdout != "" {
			t.Errorf("sbx %v: error output on stdout: %q", c.args, res.stdout)
		}
	}
}
