package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

// protectTree makes a workspace with a git folder, a sub folder, a second
// workspace nested in the first and a folder outside both, all resolved.
func protectTree(t *testing.T) (ws []sandbox.Workspace, outside string) {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := filepath.Join(dir, "ws")
	for _, d := range []string{".git/hooks", "sub/dir", "nested/x", "real/hooks"} {
		if err := os.MkdirAll(filepath.Join(w, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	outside = filepath.Join(dir, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{".git/config", ".git/hooks/pre-commit"} {
		if err := os.WriteFile(filepath.Join(w, f), []byte("x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"link": "real", "out": outside} {
		if err := os.Symlink(target, filepath.Join(w, link)); err != nil {
			t.Fatal(err)
		}
	}
	return []sandbox.Workspace{{Path: w}, {Path: filepath.Join(w, "nested"), ReadOnly: true}}, outside
}

func TestResolveProtect(t *testing.T) {
	ws, outside := protectTree(t)
	w := ws[0].Path
	for _, tc := range []struct {
		in      string
		want    string
		viaLink bool
		err     error
	}{
		{in: ".git/hooks", want: w + "/.git/hooks"},
		{in: "./sub//dir/", want: w + "/sub/dir"},
		{in: w + "/.git/config", want: w + "/.git/config"},
		{in: "sub/../.git/hooks", want: w + "/.git/hooks"},
		{in: "nested/x", want: w + "/nested/x"},
		{in: ".", want: w},
		{in: "link/hooks", want: w + "/real/hooks", viaLink: true},
		{in: "missing", err: ErrProtectMissing},
		{in: "out", err: ErrProtectOutside},
		{in: outside, err: ErrProtectOutside},
		{in: "..", err: ErrProtectOutside},
		{in: "/", err: ErrProtectOutside},
	} {
		got, viaLink, err := ResolveProtect(tc.in, ws)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("ResolveProtect(%q) = %q, %v; want error %v", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want || viaLink != tc.viaLink {
			t.Errorf("ResolveProtect(%q) = %q, %t, %v; want %q, %t", tc.in, got, viaLink, err, tc.want, tc.viaLink)
		}
	}
	// A path given through a symlink outside the workspaces (say, a linked
	// home folder) is fine and not "via a link" in the workspace.
	alias := filepath.Join(filepath.Dir(w), "alias")
	if err := os.Symlink(w, alias); err != nil {
		t.Fatal(err)
	}
	if got, viaLink, err := ResolveProtect(alias+"/.git/hooks", ws); err != nil || got != w+"/.git/hooks" || viaLink {
		t.Errorf("through an outside alias: %q, %t, %v", got, viaLink, err)
	}
}

func TestMountSteps(t *testing.T) {
	ws := []sandbox.Workspace{{Path: "/w"}, {Path: "/w/n"}, {Path: "/v"}}
	for _, tc := range []struct {
		name  string
		paths []string
		want  []mountStep
	}{
		{"defaults", []string{"/w/.git/hooks", "/w/.git/config"}, []mountStep{
			{"/w/.git", false}, {"/w/.git/config", true}, {"/w/.git/hooks", true},
		}},
		{"deep user path", []string{"/w/a/b/c"}, []mountStep{
			{"/w/a", false}, {"/w/a/b", false}, {"/w/a/b/c", true},
		}},
		{"protected parent of a protected path", []string{"/w/a/b/c", "/w/a"}, []mountStep{
			{"/w/a", true}, {"/w/a/b", false}, {"/w/a/b/c", true},
		}},
		{"duplicates", []string{"/w/x", "/w/x"}, []mountStep{{"/w/x", true}}},
		{"workspace root", []string{"/v"}, []mountStep{{"/v", true}}},
		// Nested workspaces: parents up to the outermost root, which the
		// agent reaches the path through too.
		{"nested workspace", []string{"/w/n/.git/hooks"}, []mountStep{
			{"/w/n", false}, {"/w/n/.git", false}, {"/w/n/.git/hooks", true},
		}},
		{"outside", []string{"/elsewhere/x"}, []mountStep{}},
		{"prefix is not a parent", []string{"/vv/x"}, []mountStep{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, mountSteps(tc.paths, ws)); diff != "" {
				t.Errorf("mountSteps(%q) (-want +got):\n%s", tc.paths, diff)
			}
		})
	}
}

func TestPlanProtect(t *testing.T) {
	ws, _ := protectTree(t)
	w := ws[0].Path
	if err := os.MkdirAll(filepath.Join(ws[1].Path, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	extra := filepath.Join(filepath.Dir(w), "extra")
	if err := os.MkdirAll(extra, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := sandbox.Config{
		// The read-only nested workspace gets no defaults; the extra one
		// has no git folder.
		Workspaces:      append(ws, sandbox.Workspace{Path: extra}),
		Protect:         []string{w + "/sub/dir"},
		ProtectDefaults: true,
	}
	plan, err := planProtect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := protectPlan{
		Steps: []mountStep{
			{w + "/.git", false}, {w + "/sub", false},
			{w + "/.git/config", true}, {w + "/.git/hooks", true}, {w + "/sub/dir", true},
		},
		Missing: []string{extra + "/.git/hooks", extra + "/.git/config"},
	}
	if diff := cmp.Diff(want, plan); diff != "" {
		t.Errorf("plan (-want +got):\n%s", diff)
	}

	// A configured path that went away fails the start (fail closed).
	cfg.Protect = append(cfg.Protect, w+"/gone")
	if _, err := planProtect(cfg); !errors.Is(err, ErrProtectMissing) {
		t.Errorf("missing configured path: %v, want ErrProtectMissing", err)
	}
	// One that became a link out of the workspaces too.
	if err := os.RemoveAll(w + "/sub/dir"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", w+"/sub/dir"); err != nil {
		t.Fatal(err)
	}
	cfg.Protect = []string{w + "/sub/dir"}
	if _, err := planProtect(cfg); !errors.Is(err, ErrProtectOutside) {
		t.Errorf("path now linking outside: %v, want ErrProtectOutside", err)
	}
}

func TestSameProtect(t *testing.T) {
	if !SameProtect([]string{"/a", "/b"}, []string{"/b", "/a", "/a"}) {
		t.Error("order and duplicates should not matter")
	}
	if SameProtect([]string{"/a"}, []string{"/a", "/b"}) || SameProtect(nil, []string{"/a"}) {
		t.Error("different sets reported equal")
	}
	if !SameProtect(nil, []string{}) {
		t.Error("nil and empty differ")
	}
}

// TestApplyProtect runs applyProtect in a child of the test in its own
// mount namespace (as Launch starts the supervisor) and checks, in the
// child, what the guest would get through QEMU: read-only protected paths,
// parents that cannot be renamed, the rest writable. Needs root.
func TestApplyProtect(t *testing.T) {
	if os.Getenv("SBX_PROTECT_CHILD") != "" {
		return // the child's work runs in TestMain's path below
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	ws, _ := protectTree(t)
	w := ws[0].Path
	cmd := exec.Command(os.Args[0], "-test.run=^TestApplyProtectChild$", "-test.v")
	cmd.Env = append(os.Environ(), "SBX_PROTECT_CHILD="+w)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: protectCloneflags}
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	// Nothing leaked into this namespace.
	if err := os.WriteFile(w+"/.git/hooks/pre-commit", []byte("host\n"), 0o755); err != nil {
		t.Errorf("write in the parent namespace: %v", err)
	}
	if err := os.Rename(w+"/.git", w+"/.git2"); err != nil {
		t.Errorf("rename in the parent namespace: %v", err)
	}
	// In this (the parent's) namespace, applyProtect refuses to mount.
	if err := applyProtect([]mountStep{{Path: w + "/sub", ReadOnly: true}}); err == nil || !strings.Contains(err.Error(), "mount namespace") {
		t.Errorf("applyProtect in the parent's namespace: %v, want a refusal", err)
	}
}

func TestApplyProtectChild(t *testing.T) {
	w := os.Getenv("SBX_PROTECT_CHILD")
	if w == "" {
		t.Skip("run by TestApplyProtect")
	}
	cfg := sandbox.Config{Workspaces: []sandbox.Workspace{{Path: w}}, Protect: []string{w + "/sub/dir"}, ProtectDefaults: true}
	plan, err := planProtect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := applyProtect(plan.Steps); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		op   func() error
		want error // nil: must succeed
	}{
		{"write a hook", func() error { return os.WriteFile(w+"/.git/hooks/pre-commit", []byte("evil\n"), 0o755) }, syscall.EROFS},
		{"add a hook", func() error { return os.WriteFile(w+"/.git/hooks/post-checkout", []byte("evil\n"), 0o755) }, syscall.EROFS},
		{"write the git config", func() error { return os.WriteFile(w+"/.git/config", []byte("evil\n"), 0o644) }, syscall.EROFS},
		{"remove the git config", func() error { return os.Remove(w + "/.git/config") }, syscall.EBUSY},
		{"rename .git", func() error { return os.Rename(w+"/.git", w+"/.git2") }, syscall.EBUSY},
		{"rename the hooks", func() error { return os.Rename(w+"/.git/hooks", w+"/.git/h2") }, syscall.EBUSY},
		{"rename sub", func() error { return os.Rename(w+"/sub", w+"/sub2") }, syscall.EBUSY},
		{"write in sub/dir", func() error { return os.WriteFile(w+"/sub/dir/f", nil, 0o644) }, syscall.EROFS},
		{"hard link the config", func() error { return os.Link(w+"/.git/config", w+"/hl") }, syscall.EXDEV},
		{"write .git/HEAD", func() error { return os.WriteFile(w+"/.git/HEAD", []byte("ref\n"), 0o644) }, nil},
		{"write in sub", func() error { return os.WriteFile(w+"/sub/f", nil, 0o644) }, nil},
		{"write a normal file", func() error { return os.WriteFile(w+"/normal", nil, 0o644) }, nil},
	} {
		err := tc.op()
		if (tc.want == nil && err != nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.want)
		}
	}
}

// TestProtectWatch checks the watcher (watchProtect) in a child in its own
// mount namespace: a rename over a protected file from this (the host's)
// namespace, as `git config` does, detaches the child's read-only mount;
// the watcher makes it again on the new file. A protected folder moved
// away on the host cannot be protected again: the watcher reports an
// error. Needs root.
func TestProtectWatch(t *testing.T) {
	if os.Getenv("SBX_PROTECT_CHILD") != "" {
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	ws, _ := protectTree(t)
	w := ws[0].Path
	cmd := exec.Command(os.Args[0], "-test.run=^TestProtectWatchChild$", "-test.v")
	cmd.Env = append(os.Environ(), "SBX_PROTECT_CHILD="+w)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: protectCloneflags}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	var log strings.Builder
	await := func(word string) bool {
		for lines.Scan() {
			log.WriteString(lines.Text() + "\n")
			if lines.Text() == word {
				return true
			}
		}
		return false
	}
	defer func() {
		stdin.Close()
		for lines.Scan() {
			log.WriteString(lines.Text() + "\n")
		}
		err := cmd.Wait()
		t.Logf("child:\n%s", log.String())
		if err != nil {
			t.Errorf("child: %v", err)
		}
	}()
	if !await("READY") {
		t.Error("the child did not get ready")
		return
	}
	// What `git config` does on the host.
	if err := os.WriteFile(w+"/.git/config.lock", []byte("host v2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(w+"/.git/config.lock", w+"/.git/config"); err != nil {
		t.Fatalf("rename over the protected file on the host: %v", err)
	}
	fmt.Fprintln(stdin, "RENAMED")
	if !await("REPROTECTED") {
		t.Error("the child did not see the file protected again")
		return
	}
	if err := os.Rename(w+"/.git/hooks", w+"/hooks-moved"); err != nil {
		t.Fatalf("move the hooks away on the host: %v", err)
	}
	fmt.Fprintln(stdin, "MOVED")
	if !await("LOST") {
		t.Error("the child did not see the protection lost")
	}
}

func TestProtectWatchChild(t *testing.T) {
	w := os.Getenv("SBX_PROTECT_CHILD")
	if w == "" {
		t.Skip("run by TestProtectWatch")
	}
	cfg := sandbox.Config{Workspaces: []sandbox.Workspace{{Path: w}}, ProtectDefaults: true}
	plan, err := planProtect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := applyProtect(plan.Steps); err != nil {
		t.Fatal(err)
	}
	events := make(chan protectEvent, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := watchProtect(ctx, plan.Steps, func(ev protectEvent) { events <- ev }); err != nil {
		t.Fatal(err)
	}
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("READY")
	if !in.Scan() || in.Text() != "RENAMED" {
		t.Fatalf("parent: %q", in.Text())
	}
	select {
	case ev := <-events:
		if ev.Err != nil || ev.Path != w+"/.git/config" {
			t.Fatalf("event %+v, want %s protected again", ev, w+"/.git/config")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event after the rename on the host")
	}
	if got, err := os.ReadFile(w + "/.git/config"); err != nil || string(got) != "host v2\n" {
		t.Errorf("config after the rename: %q, %v", got, err)
	}
	if err := os.WriteFile(w+"/.git/config", []byte("evil\n"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write the renamed-over config: %v, want EROFS", err)
	}
	if err := os.WriteFile(w+"/.git/hooks/pre-commit", []byte("evil\n"), 0o755); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write a hook: %v, want EROFS", err)
	}
	fmt.Println("REPROTECTED")
	if !in.Scan() || in.Text() != "MOVED" {
		t.Fatalf("parent: %q", in.Text())
	}
	select {
	case ev := <-events:
		if ev.Err == nil || ev.Path != w+"/.git/hooks" {
			t.Fatalf("event %+v, want an error for %s", ev, w+"/.git/hooks")
		}
		t.Logf("lost: %v", ev.Err)
	case <-time.After(5 * time.Second):
		t.Fatal("no event after the hooks moved on the host")
	}
	fmt.Println("LOST")
}

// TestPlanProtectGit covers the git layouts --protect-defaults meets: a
// .git file (worktree), commondir and config.worktree, symlinked hooks,
// hooks linking into the workspace, and hard links.
func TestPlanProtectGit(t *testing.T) {
	newWS := func(t *testing.T) (string, sandbox.Config) {
		ws, _ := protectTree(t)
		return ws[0].Path, sandbox.Config{Workspaces: ws[:1], ProtectDefaults: true}
	}
	write := func(t *testing.T, p, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	steps := func(plan protectPlan) map[string]bool {
		m := map[string]bool{}
		for _, s := range plan.Steps {
			m[s.Path] = s.ReadOnly
		}
		return m
	}
	t.Run("git file", func(t *testing.T) {
		w, cfg := newWS(t)
		if err := os.RemoveAll(w + "/.git"); err != nil {
			t.Fatal(err)
		}
		write(t, w+"/.git", "gitdir: /elsewhere/.git/worktrees/x\n")
		if _, _, err := ResolveProtect(".git/hooks", cfg.Workspaces); !errors.Is(err, ErrProtectMissing) {
			t.Errorf("ResolveProtect under a .git file: %v, want ErrProtectMissing", err)
		}
		plan, err := planProtect(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]mountStep{{w + "/.git", true}}, plan.Steps); diff != "" {
			t.Errorf("steps (-want +got):\n%s", diff)
		}
		if notes, _ := PlanNotes(cfg); len(notes) != 1 || !strings.Contains(notes[0], "/elsewhere/.git/worktrees/x") {
			t.Errorf("notes %q", notes)
		}
	})
	t.Run("commondir and config.worktree", func(t *testing.T) {
		w, cfg := newWS(t)
		write(t, w+"/.git/commondir", ".\n")
		write(t, w+"/.git/config.worktree", "[core]\n")
		plan, err := planProtect(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if m := steps(plan); !m[w+"/.git/commondir"] || !m[w+"/.git/config.worktree"] {
			t.Errorf("steps %v lack commondir or config.worktree", plan.Steps)
		}
		write(t, w+"/.git/commondir", "../../other/.git\n")
		if _, err := planProtect(cfg); !errors.Is(err, ErrProtectCommonDir) {
			t.Errorf("commondir outside .git: %v, want ErrProtectCommonDir", err)
		}
	})
	t.Run("symlinked defaults", func(t *testing.T) {
		w, cfg := newWS(t)
		if err := os.RemoveAll(w + "/.git/hooks"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../real/hooks", w+"/.git/hooks"); err != nil {
			t.Fatal(err)
		}
		if _, err := planProtect(cfg); !errors.Is(err, ErrProtectLink) {
			t.Errorf("symlinked hooks: %v, want ErrProtectLink", err)
		}
		if err := os.Rename(w+"/.git", w+"/real/git"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("real/git", w+"/.git"); err != nil {
			t.Fatal(err)
		}
		if _, err := planProtect(cfg); !errors.Is(err, ErrProtectLink) {
			t.Errorf("symlinked .git: %v, want ErrProtectLink", err)
		}
	})
	t.Run("hook linking into the workspace", func(t *testing.T) {
		w, cfg := newWS(t)
		write(t, w+"/scripts/pre-push", "#!/bin/sh\n")
		write(t, w+"/tools/lint/run", "#!/bin/sh\n")
		if err := os.Symlink("../../scripts/pre-push", w+"/.git/hooks/pre-push"); err != nil {
			t.Fatal(err)
		}
		// A linked folder, with a link in it: followed too.
		if err := os.Symlink("../../tools", w+"/.git/hooks/tools"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../sub/dir", w+"/tools/subdir"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../../scripts/missing", w+"/.git/hooks/post-merge"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/usr/bin/true", w+"/.git/hooks/outside"); err != nil {
			t.Fatal(err)
		}
		plan, err := planProtect(cfg)
		if err != nil {
			t.Fatal(err)
		}
		m := steps(plan)
		for p, ro := range map[string]bool{w + "/scripts/pre-push": true, w + "/scripts": false, w + "/tools": true, w + "/sub/dir": true, w + "/sub": false} {
			if got, ok := m[p]; !ok || got != ro {
				t.Errorf("step %s: %t, %t; want read-only %t", p, got, ok, ro)
			}
		}
		if notes := strings.Join(plan.Notes, "\n"); !strings.Contains(notes, "post-merge is a symlink to ../../scripts/missing, which does not exist") || strings.Contains(notes, "outside") {
			t.Errorf("notes:\n%s", notes)
		}
	})
	t.Run("hard link", func(t *testing.T) {
		w, cfg := newWS(t)
		if err := os.Link(w+"/.git/hooks/pre-commit", w+"/pc"); err != nil {
			t.Fatal(err)
		}
		_, err := planProtect(cfg)
		if !errors.Is(err, ErrProtectHardLink) || !strings.Contains(err.Error(), "cp -p "+w+"/.git/hooks/pre-commit") {
			t.Errorf("hard-linked hook: %v, want ErrProtectHardLink naming the fix", err)
		}
	})
}
