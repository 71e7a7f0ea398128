package cli

import (
	"strings"
	"testing"
)

func TestTemplateCells(t *testing.T) {
	src := "image 127.0.0.1:5000/a/b:1@sha256:" + "0123456789ab" + strings.Repeat("f", 52)
	if got, want := shortDigests(src), "image 127.0.0.1:5000/a/b:1@sha256:0123456789ab"; got != want {
		t.Errorf("shortDigests = %q, want %q", got, want)
	}
	en := templateEntry{Agents: []string{"claude", "codex"}, Versions: map[string]string{"claude": "2.1.3"}, Docker: true}
	if got, want := agentsCell(en), "claude 2.1.3, codex, (docker)"; got != want {
		t.Errorf("agentsCell = %q, want %q", got, want)
	}
	if got := agentsCell(templateEntry{}); got != "-" {
		t.Errorf("agentsCell of nothing = %q", got)
	}
	for n, want := range map[int64]string{512 << 10: "512 KiB", 300 << 20: "300 MiB", 3 << 30: "3.0 GiB"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCheckNewName(t *testing.T) {
	for name, ok := range map[string]bool{"mine": true, "my-img.2": true, "shell": false, "agents": false, "a/b": false, "a:b": false, ".x": false} {
		if err := checkNewName(name); (err == nil) != ok {
			t.Errorf("checkNewName(%q) = %v, want ok %v", name, err, ok)
		}
	}
}
