package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

func TestTerminalSafe(t *testing.T) {
	for in, want := range map[string]string{
		"plain\ttext\n":               "plain\ttext\n",
		"crlf\r\nline\r\n":            "crlf\nline\n",
		"bare\rcr":                    `bare\rcr`,
		"\x1b]52;c;eA==\x07\x1b[2J":   `\x1b]52;c;eA==\a\x1b[2J`,
		"del\x7f c1\u0085 bidi\u202e": `del\x7f c1\u0085 bidi\u202e`,
		"bad\xff\xc3 ok é":            `bad\xff\xc3 ok é`,
	} {
		if got := string(appendTerminalSafe(nil, []byte(in))); got != want {
			t.Errorf("appendTerminalSafe(%q) = %q, want %q", in, got, want)
		}
		// Written one byte at a time: runes and CRLF cut between writes.
		var out bytes.Buffer
		tw := &terminalWriter{w: &out}
		for i := 0; i < len(in); i++ {
			if _, err := tw.Write([]byte{in[i]}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Flush(); err != nil {
			t.Fatal(err)
		}
		if out.String() != want {
			t.Errorf("terminalWriter(%q) = %q, want %q", in, out.String(), want)
		}
	}
	for in, want := range map[string]string{
		"api.anthropic.com:443": "api.anthropic.com:443",
		"x\x1b[8m\r\nrow":       `"x\x1b[8m\r\nrow"`,
		"tab\tcell":             `"tab\tcell"`,
		"\xff":                  `"\xff"`,
	} {
		if got := terminalField(in); got != want {
			t.Errorf("terminalField(%q) = %q, want %q", in, got, want)
		}
	}
}

// The state check compares real paths, in both directions, and also
// covers a runtime folder not made yet.
func TestCheckStateWorkspaces(t *testing.T) {
	home := t.TempDir()
	dirs := paths.Dirs{
		Data:    filepath.Join(home, "data", "sbx"),
		Config:  filepath.Join(home, "conf", "sbx"),
		Cache:   filepath.Join(home, "cache", "sbx"),
		Runtime: filepath.Join(home, "run", "sbx"),
	}
	for _, d := range []string{dirs.Data, dirs.Config, dirs.Cache, filepath.Join(home, "proj"), filepath.Join(dirs.Cache, "templates")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(filepath.Join(home, "conf"), link); err != nil {
		t.Fatal(err)
	}
	e := &env{dirs: dirs}
	for ws, bad := range map[string]bool{
		home:                                   true,
		filepath.Join(home, "run"):             true, // runtime folder not made yet
		dirs.Data:                              true,
		filepath.Join(dirs.Cache, "templates"): true, // inside
		link:                                   true, // through a symlink
		filepath.Join(home, "proj"):            false,
		filepath.Join(home, "data", "sbx2"):    false,
	} {
		err := e.manager().CheckWorkspaces([]sandbox.Workspace{{Path: ws}})
		if (err != nil) != bad {
			t.Errorf("%s: err %v, want refused %v", ws, err, bad)
		}
	}
}

// Found by the fifth outside review: a message carrying guest output (a
// failed clone's git output) reached the terminal with its escapes.
func TestRenderEscapes(t *testing.T) {
	var out strings.Builder
	Render(&out, userErr(nil, "hint\x1b[2J", "clone failed: \x1b]0;PWNED\a"), false)
	if strings.ContainsAny(out.String(), "\x1b\a") || !strings.Contains(out.String(), `\x1b]0;PWNED\a`) {
		t.Errorf("rendered %q", out.String())
	}
}

// A lifecycle error renders its message and hint like a UserError.
func TestRenderLifecycleError(t *testing.T) {
	var out strings.Builder
	Render(&out, fmt.Errorf("wrapped: %w", &lifecycle.Error{Code: lifecycle.Failed, Msg: "sandbox x did not stop", Hint: "see `sbx logs x`"}), false)
	if out.String() != "sbx: sandbox x did not stop\nhint: see `sbx logs x`\n" {
		t.Errorf("rendered %q", out.String())
	}
}
