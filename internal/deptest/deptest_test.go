// Package deptest checks the dependency rules of docs/architecture.md: what
// the guest agent may link, who may import secrets, and that every package
// has a doc comment.
package deptest

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

func deps(t *testing.T, pkg string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// TestAgentDeps: the guest binary never carries proxy, policy, secrets or
// VMM code, nor TLS interception.
func TestAgentDeps(t *testing.T) {
	const mod = "github.com/sbx-dev/sbx/"
	banned := []string{"internal/proxy", "internal/secrets", "internal/policy", "internal/vm", "internal/supervisor", "internal/cli", "internal/netstack"}
	for _, d := range deps(t, "./cmd/sbx-agent") {
		for _, b := range banned {
			if d == mod+b || strings.HasPrefix(d, mod+b+"/") {
				t.Errorf("cmd/sbx-agent links %s", d)
			}
		}
	}
}

// TestVMDoesNotImportUpward: backends depend on vm, never on the CLI or the
// supervisor.
func TestVMDoesNotImportUpward(t *testing.T) {
	for _, d := range deps(t, "./internal/vm/...") {
		if strings.HasSuffix(d, "/internal/cli") || strings.HasSuffix(d, "/internal/supervisor") {
			t.Errorf("internal/vm links %s", d)
		}
	}
}

// TestPackageDocs: every package has exactly one package doc comment.
func TestPackageDocs(t *testing.T) {
	root := repoRoot(t)
	docs := map[string]int{}
	seen := map[string]bool{}
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Errorf("parse %s: %v", path, err)
			return nil
		}
		if strings.HasSuffix(path, "_test.go") && strings.HasSuffix(f.Name.Name, "_test") {
			return nil
		}
		dir := filepath.Dir(path)
		seen[dir] = true
		if f.Doc != nil && !strings.HasSuffix(path, "_test.go") {
			docs[dir]++
		}
		return nil
	})
	for dir := range seen {
		rel, _ := filepath.Rel(root, dir)
		if rel == "internal/deptest" || rel == "integration" {
			continue // test-only packages
		}
		switch n := docs[dir]; {
		case n == 0:
			t.Errorf("package %s has no package doc comment", rel)
		case n > 1:
			t.Errorf("package %s has %d package doc comments, want 1", rel, n)
		}
	}
}
