package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/secrets"
)

// runSbxIn runs one sbx command in process with the given stdin (not a
// terminal).
func runSbxIn(t *testing.T, stdin string, args ...string) sbxResult {
	t.Helper()
	var out, errb bytes.Buffer
	root, debug := NewRoot(t.Context(), Streams{In: strings.NewReader(stdin), Out: &out, Err: &errb})
	root.SetArgs(args)
	err := root.Execute()
	code := Render(&errb, err, *debug)
	return sbxResult{out.String(), errb.String(), code}
}

const cliSecret = "sk-cli-0123456789abcdef-VALUE"

func TestSecretSetLsRm(t *testing.T) {
	dirs := policyHome(t)
	// A D-Bus address must not matter: SBX_HOME means the file store.
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
	sbs := sandbox.NewStore(dirs)
	sb, err := sbs.Create(sandbox.Config{ID: "0123456789ab", Name: "dev", Created: time.Now()})
	if err == nil {
		err = sbs.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}

	r := runSbxIn(t, cliSecret+"\n", "secret", "set", "openai")
	if r.code != 0 || !strings.Contains(r.out, "secret openai set for all sandboxes") || !strings.Contains(r.out, "OPENAI_API_KEY=proxy-managed") {
		t.Fatalf("set: %+v", r)
	}
	if strings.Count(r.err, "\n") != 1 || !strings.Contains(r.err, "mode 0600") || !strings.Contains(r.err, "SBX_HOME is set") {
		t.Errorf("want one notice line, got %q", r.err)
	}
	if r := runSbxIn(t, "", "secret", "set", "--sandbox", "dev", "anthropic", "-t", "sk-ant-oat01-x"); r.code != 0 || !strings.Contains(r.out, "CLAUDE_CODE_OAUTH_TOKEN=proxy-managed") {
		t.Fatalf("set --sandbox: %+v", r)
	}
	r = runSbxIn(t, "custom-value-123", "secret", "set-custom", "--host", "api.example.com", "--host", "b.example.com:8443", "--env", "EXAMPLE_TOKEN")
	if r.code != 0 || !strings.Contains(r.out, "EXAMPLE_TOKEN=sbx-ph-") || !strings.Contains(r.out, "api.example.com, b.example.com") {
		t.Fatalf("set-custom: %+v", r)
	}

	r = runSbxIn(t, "", "secret", "ls")
	if r.code != 0 {
		t.Fatalf("ls: %+v", r)
	}
	for _, want := range []string{"openai", "global", "anthropic", "dev", "EXAMPLE_TOKEN", "api.openai.com", "b.example.com"} {
		if !strings.Contains(r.out, want) {
			t.Errorf("ls output lacks %q:\n%s", want, r.out)
		}
	}
	r = runSbxIn(t, "", "secret", "ls", "--json")
	var rows []secretJSON
	if err := json.Unmarshal([]byte(r.out), &rows); err != nil || len(rows) != 3 {
		t.Fatalf("ls --json: %v\n%s", err, r.out)
	}
	if rows[2].Scope != "sandbox" || rows[2].Sandbox != "dev" || rows[2].Service != "anthropic" || rows[2].Store != "file" {
		t.Errorf("sandbox row = %+v", rows[2])
	}
	for _, out := range []string{r.out, runSbxIn(t, "", "secret", "ls").out} {
		if strings.Contains(out, cliSecret) || strings.Contains(out, "custom-value-123") || strings.Contains(out, "sk-ant-oat01-x") {
			t.Errorf("ls shows a value:\n%s", out)
		}
	}

	// The file: 0600 in a 0700 folder.
	st := secrets.NewStore(secrets.Options{Dir: dirs.Config})
	for path, want := range map[string]os.FileMode{st.Dir(): 0o700, st.Path(): 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %v", path, fi.Mode(), err, want)
		}
	}

	if r := runSbxIn(t, "", "secret", "rm", "openai"); r.code != 1 || !strings.Contains(r.err, "needs confirmation") {
		t.Errorf("rm without -f off a terminal: %+v", r)
	}
	if r := runSbxIn(t, "", "secret", "rm", "-f", "--sandbox", "dev", "anthropic"); r.code != 0 || !strings.Contains(r.out, "removed for sandbox dev") {
		t.Errorf("rm: %+v", r)
	}
	if r := runSbxIn(t, "", "secret", "rm", "-f", "--sandbox", "dev", "anthropic"); r.code != 0 || !strings.Contains(r.out, "no secret anthropic") {
		t.Errorf("rm -f again: %+v", r)
	}
	if r := runSbxIn(t, "", "secret", "rm", "-f", "EXAMPLE_TOKEN"); r.code != 0 {
		t.Errorf("rm custom: %+v", r)
	}
	if ls, _ := st.List(); len(ls) != 1 || ls[0].Name != "openai" {
		t.Errorf("left: %+v", ls)
	}
}

func TestSecretErrors(t *testing.T) {
	policyHome(t)
	for _, c := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"x", []string{"secret", "set", "nosuch"}, "unknown service"},
		{"", []string{"secret", "set", "openai"}, "no value on stdin"},
		{"v", []string{"secret", "set", "-g", "--sandbox", "dev", "openai"}, "exclude each other"},
		{"v", []string{"secret", "set", "--sandbox", "nope", "openai"}, `no sandbox named "nope"`},
		{"v", []string{"secret", "set-custom", "--env", "X"}, "at least one --host"},
		{"v", []string{"secret", "set-custom", "--env", "OPENAI_API_KEY", "--host", "x.test"}, "use sbx secret set openai"},
		{"", []string{"secret", "import"}, "name one service or give --all"},
		{"", []string{"secret", "rm", "-f", "-g", "openai"}, ""},
	} {
		r := runSbxIn(t, c.stdin, c.args...)
		if c.want == "" {
			if r.code != 0 {
				t.Errorf("%v: %+v", c.args, r)
			}
			continue
		}
		if r.code != 1 || !strings.Contains(r.err, c.want) {
			t.Errorf("%v: code %d, stderr %q; want %q", c.args, r.code, r.err, c.want)
		}
	}
}

func TestSecretImport(t *testing.T) {
	dirs := policyHome(t)
	for _, v := range []string{"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY", "GH_TOKEN", "GITHUB_TOKEN",
		"GEMINI_API_KEY", "GOOGLE_API_KEY", "GROQ_API_KEY", "MISTRAL_API_KEY", "OPENROUTER_API_KEY", "XAI_API_KEY"} {
		t.Setenv(v, "")
	}
	if r := runSbxIn(t, "", "secret", "import", "--all"); r.code != 1 || !strings.Contains(r.err, "none of") {
		t.Errorf("import with nothing set: %+v", r)
	}
	t.Setenv("GITHUB_TOKEN", "ghp_from_env_123")
	t.Setenv("GOOGLE_API_KEY", "AIza_from_env_123")
	if r := runSbxIn(t, "", "secret", "import", "groq"); r.code != 1 || !strings.Contains(r.err, "GROQ_API_KEY") {
		t.Errorf("import groq unset: %+v", r)
	}
	r := runSbxIn(t, "", "secret", "import", "--all")
	if r.code != 0 || !strings.Contains(r.out, "github imported from GITHUB_TOKEN") || !strings.Contains(r.out, "google imported from GOOGLE_API_KEY") {
		t.Fatalf("import --all: %+v", r)
	}
	bs, err := secrets.NewStore(secrets.Options{Dir: dirs.Config}).Effective("")
	if err != nil || len(bs) != 2 || bs[0].Name != "github" || bs[0].Value.Reveal() != "ghp_from_env_123" {
		t.Errorf("stored: %v %v", bs, err)
	}
	if _, err := os.Stat(filepath.Join(dirs.Config, "secrets", secrets.FileName)); err != nil {
		t.Error(err)
	}
}

func TestSecretStoreIsFileUnderSBXHome(t *testing.T) {
	dirs := policyHome(t)
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
	e := &env{dirs: dirs}
	st, why := e.openSecretStore()
	if st.UsesKeyring() || why != "SBX_HOME is set" {
		t.Errorf("store uses keyring %v (%q)", st.UsesKeyring(), why)
	}
}
