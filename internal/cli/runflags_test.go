package cli

import (
	"os"
	"strings"
	"testing"
)

// Found by the twelfth review: `run -d --rm` created and booted the
// sandbox before refusing the pair; `run -d ... -- ARGS` dropped the
// arguments without a word; `--cpus 0` was taken as the default. Each is
// refused before anything is made.
func TestRunFlagRefusals(t *testing.T) {
	home := t.TempDir()
	t.Setenv("SBX_HOME", home)
	ws := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "-d", "--rm", "--name", "x1", ws}, "--rm and -d do not go together"},
		{[]string{"run", "-d", "--name", "x2", ws, "--", "-c", "exit 3"}, "would not be used"},
		{[]string{"run", "--cpus", "0", "--name", "x3", ws}, "--cpus 0"},
		{[]string{"create", "--cpus", "0", "--name", "x4", ws}, "--cpus 0"},
	} {
		r := runSbx(t, c.args...)
		if r.code == 0 || !strings.Contains(r.err, c.want) {
			t.Errorf("%v: exit %d %q, want a refusal saying %q", c.args, r.code, r.err, c.want)
		}
	}
	if ents, _ := os.ReadDir(home + "/sandboxes"); len(ents) != 0 {
		t.Errorf("refused commands left %d sandboxes", len(ents))
	}
}
