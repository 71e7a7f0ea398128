package wsdiff

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func write(t testing.TB, root, rel, data string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func take(t testing.TB, root string, opt Options) *Snapshot {
	t.Helper()
	s, err := Take([]string{root}, opt)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func byPath(cs []Change) map[string]Change {
	m := map[string]Change{}
	for _, c := range cs {
		m[c.Path] = c
	}
	return m
}

// tree makes a small project: a git folder with objects and a hook, an
// ignored build folder, and ordinary files.
func tree(t *testing.T) (root, outsideDir string) {
	base := t.TempDir()
	root = filepath.Join(base, "ws")
	outsideDir = filepath.Join(base, "outside")
	os.MkdirAll(outsideDir, 0o755)
	write(t, root, ".git/HEAD", "ref: refs/heads/main\n", 0o644)
	write(t, root, ".git/config", "[core]\n", 0o644)
	write(t, root, ".git/objects/ab/cdef", "obj", 0o444)
	write(t, root, ".git/hooks/pre-commit.sample", "#!/bin/sh\n", 0o755)
	write(t, root, ".gitignore", "build/\n*.log\n", 0o644)
	write(t, root, "build/a.o", "o", 0o644)
	write(t, root, "build/sub/b.o", "o", 0o644)
	write(t, root, "README.md", "hello\n", 0o644)
	write(t, root, "script.sh", "echo hi\n", 0o644)
	write(t, root, "Makefile", "all:\n\ttrue\n", 0o644)
	write(t, root, "package.json", `{"scripts":{"test":"true"}}`, 0o644)
	write(t, root, "src/main.go", "package main\n", 0o644)
	write(t, root, "gone.txt", "x", 0o644)
	write(t, outsideDir, "secret", "host secret", 0o644)
	return root, outsideDir
}

func TestCompare(t *testing.T) {
	root, outsideDir := tree(t)
	filesDir := filepath.Join(t.TempDir(), "files")
	old := take(t, root, Options{FilesDir: filesDir})

	// The snapshot summarises .git/objects and the ignored build folder.
	if e := old.Trees[0].Lookup("build/a.o"); e != nil {
		t.Errorf("ignored folder listed: %+v", e)
	}
	if e := old.Trees[0].Lookup(".git/objects/ab/cdef"); e != nil {
		t.Errorf(".git/objects listed: %+v", e)
	}
	sums := map[string]Summary{}
	for _, s := range old.Trees[0].Summaries {
		sums[s.Dir] = s
	}
	if s := sums["build"]; s.Files != 2 || s.Dirs != 1 || s.Reason != "ignored" {
		t.Errorf("build summary = %+v", s)
	}
	if s := sums[".git/objects"]; s.Files != 1 || s.Reason != "git objects" {
		t.Errorf("objects summary = %+v", s)
	}
	if e := old.Trees[0].Lookup("package.json"); e == nil || !e.Hashed || !e.Copied {
		t.Errorf("package.json not hashed and kept: %+v", e)
	}
	if e := old.Trees[0].Lookup("README.md"); e == nil || e.Hashed {
		t.Errorf("README.md hashed: %+v", e)
	}

	time.Sleep(10 * time.Millisecond)
	write(t, root, ".git/hooks/pre-commit", "#!/bin/sh\ncurl evil\n", 0o755)
	write(t, root, "package.json", `{"scripts":{"test":"curl evil"}}`, 0o644)
	write(t, root, "README.md", "hello world\n", 0o644)
	os.Chmod(filepath.Join(root, "script.sh"), 0o755)
	os.Remove(filepath.Join(root, "gone.txt"))
	os.Symlink("/etc/passwd", filepath.Join(root, "passwd"))
	os.Symlink("src/main.go", filepath.Join(root, "inner"))
	if err := os.Link(filepath.Join(outsideDir, "secret"), filepath.Join(root, "hardlink")); err != nil {
		t.Fatal(err)
	}
	write(t, root, ".git/objects/12/3456", "obj", 0o444)
	write(t, root, "build/c.o", "o", 0o644)
	write(t, root, "debug.log", "ignored file, listed", 0o644)

	now := take(t, root, Options{Base: old})
	cs := Compare(old, now)
	for _, c := range cs {
		t.Logf("%+v", c)
	}
	got := byPath(cs)
	want := map[string]struct {
		change, kind string
		risky        bool
		reason       string
	}{
		".git/hooks/pre-commit": {Added, "file", true, "git runs hooks"},
		"package.json":          {Modified, "file", true, "npm"},
		"README.md":             {Modified, "file", false, ""},
		"script.sh":             {Modified, "file", true, "not executable"}, // ctime moved: maybe written too
		"gone.txt":              {Deleted, "file", false, ""},
		"passwd":                {Added, "symlink", true, "outside the workspace"},
		"inner":                 {Added, "symlink", false, ""},
		"hardlink":              {Added, "file", true, "outside the workspace"},
		".git/objects":          {Modified, "summary", false, ""},
		"build":                 {Modified, "summary", false, ""},
		"debug.log":             {Added, "file", false, ""},
	}
	for p, w := range want {
		c, ok := got[p]
		if !ok {
			t.Errorf("%s: no change reported", p)
			continue
		}
		if c.Change != w.change || c.Kind != w.kind || c.Risky != w.risky || !strings.Contains(c.Reason, w.reason) {
			t.Errorf("%s = %+v, want %+v", p, c, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("unexpected change %+v", got[p])
		}
	}
	// Risky changes come first.
	seenPlain := false
	for _, c := range cs {
		if !c.Risky {
			seenPlain = true
		} else if seenPlain {
			t.Errorf("risky %s after a plain change", c.Path)
		}
	}
	if c := got["passwd"]; c.Target != "/etc/passwd" || !c.Outside {
		t.Errorf("symlink change = %+v", c)
	}
	if c := got["script.sh"]; c.OldMode != "0644" || c.Mode != "0755" {
		t.Errorf("mode change = %+v", c)
	}
}

// A hard link inside the tree to another file of the tree is no link out.
func TestHardLinkInside(t *testing.T) {
	root, _ := tree(t)
	old := take(t, root, Options{})
	os.Link(filepath.Join(root, "README.md"), filepath.Join(root, "README2.md"))
	cs := Compare(old, take(t, root, Options{Base: old}))
	for _, c := range cs {
		if c.Risky {
			t.Errorf("risky: %+v", c)
		}
	}
}

// Content rewritten with the same size and mtime still shows, by hash for
// flagged files and by ctime for others.
func TestSameSizeAndMtime(t *testing.T) {
	root, _ := tree(t)
	old := take(t, root, Options{})
	for _, rel := range []string{"Makefile", "README.md"} {
		p := filepath.Join(root, rel)
		fi, _ := os.Stat(p)
		data, _ := os.ReadFile(p)
		data[0] ^= 1
		os.WriteFile(p, data, 0o644)
		os.Chtimes(p, fi.ModTime(), fi.ModTime())
	}
	got := byPath(Compare(old, take(t, root, Options{Base: old})))
	if c := got["Makefile"]; c.Change != Modified || !c.Risky {
		t.Errorf("Makefile = %+v", c)
	}
	if c := got["README.md"]; c.Change != Modified {
		t.Errorf("README.md = %+v", c)
	}
}

// The walk never follows a symlinked folder.
func TestSymlinkedDirNotFollowed(t *testing.T) {
	root, outsideDir := tree(t)
	os.Symlink(outsideDir, filepath.Join(root, "out"))
	s := take(t, root, Options{})
	if e := s.Trees[0].Lookup("out/secret"); e != nil {
		t.Fatalf("walk followed a symlink: %+v", e)
	}
	if e := s.Trees[0].Lookup("out"); e == nil || e.Kind != KindSymlink {
		t.Fatalf("out = %+v", e)
	}
}

// The comparison keeps the ignore rules of its base: ignoring a folder
// during the session does not hide changes in it.
func TestIgnoreRulesFrozen(t *testing.T) {
	root, _ := tree(t)
	old := take(t, root, Options{})
	write(t, root, ".gitignore", "build/\nsrc/\n", 0o644)
	write(t, root, "src/evil.go", "package main\n", 0o644)
	got := byPath(Compare(old, take(t, root, Options{Base: old})))
	if _, ok := got["src/evil.go"]; !ok {
		t.Errorf("change hidden by a new ignore rule: %+v", got)
	}
	// Risky folders are never summarised, even when ignored.
	write(t, root, ".gitignore", ".vscode/\n.github/\n", 0o644)
	write(t, root, ".vscode/tasks.json", "{}", 0o644)
	old = take(t, root, Options{})
	write(t, root, ".vscode/tasks.json", `{"tasks":[1]}`, 0o644)
	got = byPath(Compare(old, take(t, root, Options{Base: old})))
	if c := got[".vscode/tasks.json"]; !c.Risky {
		t.Errorf(".vscode/tasks.json = %+v", c)
	}
}

// examples gives, for every path row of the table, a path it must
// classify with that row's reason.
var examples = map[string]string{
	"**/.git/hooks/*":                     ".git/hooks/pre-commit",
	".git/modules/**/hooks/*":             ".git/modules/lib/hooks/post-checkout",
	"**/.git/config":                      ".git/config",
	".git/modules/**/config":              ".git/modules/lib/config",
	"**/.git/info/attributes":             ".git/info/attributes",
	".gitattributes":                      "sub/.gitattributes",
	".gitmodules":                         ".gitmodules",
	".github/workflows/*":                 ".github/workflows/ci.yml",
	".github/actions/**":                  ".github/actions/setup/action.yml",
	".gitlab-ci.yml":                      ".gitlab-ci.yml",
	".gitlab/**":                          ".gitlab/ci/build.yml",
	".circleci/**":                        ".circleci/config.yml",
	".travis.yml":                         ".travis.yml",
	"Jenkinsfile":                         "Jenkinsfile",
	"azure-pipelines.yml":                 "azure-pipelines.yml",
	"bitbucket-pipelines.yml":             "bitbucket-pipelines.yml",
	".buildkite/**":                       ".buildkite/pipeline.yml",
	".drone.yml":                          ".drone.yml",
	".woodpecker.yml":                     ".woodpecker.yml",
	".woodpecker/**":                      ".woodpecker/build.yml",
	".pre-commit-config.yaml":             ".pre-commit-config.yaml",
	".husky/**":                           ".husky/pre-commit",
	"lefthook.yml":                        "lefthook.yml",
	"Makefile":                            "sub/Makefile",
	"makefile":                            "makefile",
	"GNUmakefile":                         "GNUmakefile",
	"*.mk":                                "build/rules.mk",
	"package.json":                        "web/package.json",
	".npmrc":                              ".npmrc",
	".yarnrc":                             ".yarnrc",
	".yarnrc.yml":                         ".yarnrc.yml",
	".pnpmfile.cjs":                       ".pnpmfile.cjs",
	"pyproject.toml":                      "pyproject.toml",
	"setup.py":                            "setup.py",
	"setup.cfg":                           "setup.cfg",
	"conftest.py":                         "tests/conftest.py",
	"build.rs":                            "build.rs",
	".cargo/config.toml":                  ".cargo/config.toml",
	".cargo/config":                       ".cargo/config",
	".envrc":                              ".envrc",
	".vscode/tasks.json":                  ".vscode/tasks.json",
	".vscode/settings.json":               ".vscode/settings.json",
	".vscode/launch.json":                 ".vscode/launch.json",
	".idea/**":                            ".idea/runConfigurations/x.xml",
	".claude/**":                          ".claude/settings.json",
	".mcp.json":                           ".mcp.json",
	".codex/**":                           ".codex/config.toml",
	".gemini/**":                          ".gemini/settings.json",
	".bashrc":                             ".bashrc",
	".bash_profile":                       ".bash_profile",
	".bash_login":                         ".bash_login",
	".bash_logout":                        ".bash_logout",
	".profile":                            ".profile",
	".zshrc":                              ".zshrc",
	".zshenv":                             ".zshenv",
	".zprofile":                           ".zprofile",
	".zlogin":                             ".zlogin",
	".config/fish/**":                     ".config/fish/config.fish",
	"**/.git/config.worktree":             ".git/config.worktree",
	"**/.git/worktrees/*/config.worktree": ".git/worktrees/wt1/config.worktree",
	"**/.git/commondir":                   "sub/.git/commondir",
	"**/.git/info/exclude":                ".git/info/exclude",
	".gitignore":                          "src/.gitignore",
}

func TestRiskyPathEveryRow(t *testing.T) {
	for _, r := range rules {
		if strings.HasPrefix(r.Pattern, "(") {
			continue
		}
		ex, ok := examples[r.Pattern]
		if !ok {
			t.Errorf("row %q has no example in the test", r.Pattern)
			continue
		}
		if got := RiskyPath(ex); got != r.Reason {
			t.Errorf("RiskyPath(%q) = %q, want %q (row %q)", ex, got, r.Reason, r.Pattern)
		}
	}
	for _, p := range []string{"README.md", "src/main.go", ".git/HEAD", ".git/index", ".git/objects/ab/cd", ".github/CODEOWNERS", ".vscode/extensions.json", "docs/Makefile.txt", ".claude"} {
		if got := RiskyPath(p); got != "" {
			t.Errorf("RiskyPath(%q) = %q, want none", p, got)
		}
	}
}

// The table in docs/workspace-trust.md is the table in the code.
func TestDocTable(t *testing.T) {
	data, err := os.ReadFile("../../docs/workspace-trust.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	start := strings.Index(doc, "<!-- risky-table -->")
	end := strings.Index(doc, "<!-- /risky-table -->")
	if start < 0 || end < start {
		t.Fatal("docs/workspace-trust.md has no risky-table markers")
	}
	row := regexp.MustCompile("^\\| `([^`]+)` \\| (.+) \\|$")
	var got []Rule
	for _, line := range strings.Split(doc[start:end], "\n") {
		if m := row.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			got = append(got, Rule{Pattern: m[1], Reason: m[2]})
		}
	}
	var want strings.Builder
	for _, r := range rules {
		fmt.Fprintf(&want, "| `%s` | %s |\n", r.Pattern, r.Reason)
	}
	if len(got) != len(rules) {
		t.Fatalf("doc has %d rows, code %d; the doc's table should read:\n%s", len(got), len(rules), want.String())
	}
	for i := range rules {
		if got[i] != rules[i] {
			t.Errorf("row %d: doc %+v, code %+v; the doc's table should read:\n%s", i, got[i], rules[i], want.String())
			break
		}
	}
}

func TestCodecRoundTrip(t *testing.T) {
	root, _ := tree(t)
	os.Symlink("/etc/passwd", filepath.Join(root, "passwd"))
	s := take(t, root, Options{})
	var buf bytes.Buffer
	if err := Encode(&buf, s); err != nil {
		t.Fatal(err)
	}
	got, err := Decode(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Trees) != 1 || len(got.Trees[0].Entries) != len(s.Trees[0].Entries) {
		t.Fatalf("decoded %+v", got)
	}
	if cs := Compare(s, got); len(cs) != 0 {
		t.Errorf("round trip differs: %+v", cs)
	}
	if !got.Taken.Equal(s.Taken) {
		t.Errorf("taken %v, want %v", got.Taken, s.Taken)
	}
	for i := range s.Trees[0].Entries {
		if s.Trees[0].Entries[i] != got.Trees[0].Entries[i] {
			t.Errorf("entry %d: %+v != %+v", i, s.Trees[0].Entries[i], got.Trees[0].Entries[i])
		}
	}
}

func FuzzDecode(f *testing.F) {
	dir := f.TempDir()
	write(f, dir, "a/Makefile", "all:\n", 0o755)
	write(f, dir, ".gitignore", "b/\n", 0o644)
	write(f, dir, "b/c", "x", 0o644)
	os.Symlink("x", filepath.Join(dir, "l"))
	s, err := Take([]string{dir}, Options{})
	if err != nil {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	Encode(&buf, s)
	f.Add(buf.Bytes())
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := Encode(&out, s); err != nil {
			t.Fatal(err)
		}
		again, err := Decode(&out)
		if err != nil {
			t.Fatalf("re-encoded snapshot does not decode: %v", err)
		}
		if len(again.Trees) != len(s.Trees) {
			t.Fatal("tree count changed")
		}
	})
}

func TestRecord(t *testing.T) {
	root, _ := tree(t)
	dir := filepath.Join(t.TempDir(), "wsdiff")
	if _, err := Record(dir, []string{root}); err != nil {
		t.Fatal(err)
	}
	first, err := Load(filepath.Join(dir, CreateFile))
	if err != nil {
		t.Fatal(err)
	}
	write(t, root, "Makefile", "all:\n\tfalse\n", 0o644)
	if _, err := Record(dir, []string{root}); err != nil {
		t.Fatal(err)
	}
	create, _ := Load(filepath.Join(dir, CreateFile))
	start, _ := Load(filepath.Join(dir, StartFile))
	if create.Trees[0].Lookup("Makefile").Hash != first.Trees[0].Lookup("Makefile").Hash {
		t.Error("create.snap was rewritten")
	}
	if start.Trees[0].Lookup("Makefile").Hash == first.Trees[0].Lookup("Makefile").Hash {
		t.Error("start.snap was not rewritten")
	}
	// Both Makefile copies are kept: each snapshot refers to one.
	for _, s := range []*Snapshot{create, start} {
		if _, err := ReadCopy(filepath.Join(dir, FilesDir), s.Trees[0].Lookup("Makefile").HashHex()); err != nil {
			t.Error(err)
		}
	}
}
