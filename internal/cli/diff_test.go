package cli

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/wsdiff"
)

func TestChangeSummary(t *testing.T) {
	ws := t.TempDir()
	sb := &sandbox.Sandbox{Dir: t.TempDir(), Config: sandbox.Config{Name: "proj", Workspaces: []sandbox.Workspace{{Path: ws}}}}
	e := &env{log: slog.New(slog.DiscardHandler)}
	var buf bytes.Buffer
	// No baseline: nothing printed.
	e.printChangeSummary(&buf, sb)
	if _, err := wsdiff.Record(sb.Path(wsdiffDir), []string{ws}); err != nil {
		t.Fatal(err)
	}
	// No change: nothing printed.
	e.printChangeSummary(&buf, sb)
	if buf.Len() != 0 {
		t.Fatalf("printed %q", buf.String())
	}
	for i := 0; i < 24; i++ {
		os.WriteFile(filepath.Join(ws, fmt.Sprintf("f%02d.txt", i)), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(ws, "Makefile"), []byte("all:\n"), 0o644)
	e.printChangeSummary(&buf, sb)
	out := buf.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1+summaryLines+1 {
		t.Errorf("%d lines:\n%s", len(lines), out)
	}
	if !strings.HasPrefix(lines[0], "sbx: 25 changes in the workspace since sandbox proj started, 1 risky:") {
		t.Errorf("header %q", lines[0])
	}
	if !strings.HasPrefix(lines[1], "  ! added") || !strings.Contains(lines[1], "Makefile") || !strings.Contains(lines[1], "make runs") {
		t.Errorf("risky change not first: %q", lines[1])
	}
	if want := "  ... 5 more; see `sbx diff proj`"; lines[len(lines)-1] != want {
		t.Errorf("last line %q, want %q", lines[len(lines)-1], want)
	}
	for _, l := range lines {
		if strings.TrimRight(l, " ") != l {
			t.Errorf("trailing blanks in %q", l)
		}
	}
}

// Paths and link targets the guest chose reach the terminal quoted.
func TestChangeSummaryQuotesPaths(t *testing.T) {
	ws := t.TempDir()
	sb := &sandbox.Sandbox{Dir: t.TempDir(), Config: sandbox.Config{Name: "proj", Workspaces: []sandbox.Workspace{{Path: ws}}}}
	e := &env{log: slog.New(slog.DiscardHandler)}
	if _, err := wsdiff.Record(sb.Path(wsdiffDir), []string{ws}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ws, "a\x1b[2Jb"), []byte("x"), 0o644)
	os.Symlink("\x1b]52;c;eA==\x07", filepath.Join(ws, "link"))
	var buf bytes.Buffer
	e.printChangeSummary(&buf, sb)
	out := buf.String()
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Errorf("raw control characters in %q", out)
	}
	if !strings.Contains(out, `"a\x1b[2Jb"`) || !strings.Contains(out, `-> "\x1b]52;c;eA==\a"`) {
		t.Errorf("summary %q", out)
	}
}

// A risky change made after the printed summary is told at the next start.
func TestUnreviewedWarning(t *testing.T) {
	ws := t.TempDir()
	sb := &sandbox.Sandbox{Dir: t.TempDir(), Config: sandbox.Config{Name: "proj", Workspaces: []sandbox.Workspace{{Path: ws}}}}
	var stderr bytes.Buffer
	e := &env{log: slog.New(slog.DiscardHandler), stderr: &stderr}
	e.startSnapshot(sb)()
	os.WriteFile(filepath.Join(ws, "notes.txt"), []byte("x"), 0o644)
	var sum bytes.Buffer
	e.printChangeSummary(&sum, sb)
	os.MkdirAll(filepath.Join(ws, ".git/hooks"), 0o755)
	os.WriteFile(filepath.Join(ws, ".git/hooks/pre-push"), []byte("#!/bin/sh\n"), 0o755)
	stderr.Reset()
	e.startSnapshot(sb)()
	out := stderr.String()
	if !strings.Contains(out, "risky") || !strings.Contains(out, ".git/hooks/pre-push") || !strings.Contains(out, "--unreviewed") || strings.Contains(out, "notes.txt") {
		t.Errorf("start said %q", out)
	}
}
