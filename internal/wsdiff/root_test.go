package wsdiff

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rootRow returns the unreadable row for root ws, if any.
func rootRow(cs []Change, ws string) (Change, bool) {
	for _, c := range cs {
		if c.Workspace == ws && c.Path == "." && c.Change == Unreadable {
			return c, true
		}
	}
	return Change{}, false
}

// A root that cannot be opened is one risky row, not an error: the other
// roots are still compared, and Record still records.
func TestRootUnopenable(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		break_     func(t *testing.T, root string)
	}{
		{"symlink", "is now a symbolic link", func(t *testing.T, root string) {
			os.RemoveAll(root)
			if err := os.Symlink("/", root); err != nil {
				t.Fatal(err)
			}
		}},
		{"gone", "is gone", func(t *testing.T, root string) { os.RemoveAll(root) }},
		{"file", "is not a folder", func(t *testing.T, root string) {
			os.RemoveAll(root)
			if err := os.WriteFile(root, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := t.TempDir()
			root := filepath.Join(t.TempDir(), "ws")
			write(t, root, "x", "1", 0o644)
			dir := t.TempDir()
			base, err := Record(dir, []string{root, other})
			if err != nil {
				t.Fatal(err)
			}
			tc.break_(t, root)
			write(t, other, ".git/hooks/post-checkout", "x", 0o755)
			_, cs, err := Since(base)
			if err != nil {
				t.Fatal(err)
			}
			c, ok := rootRow(cs, root)
			if !ok || !c.Risky || !strings.Contains(c.Reason, tc.want) {
				t.Errorf("no risky root row saying %q: %+v", tc.want, cs)
			}
			for _, c := range cs {
				if c.Workspace == root && c.Change == Deleted {
					t.Errorf("unknown content reported deleted: %+v", c)
				}
			}
			hook := false
			for _, c := range cs {
				if c.Workspace == other && c.Path == ".git/hooks/post-checkout" && c.Risky {
					hook = true
				}
			}
			if !hook {
				t.Errorf("other root not compared: %+v", cs)
			}
			again, err := Record(dir, []string{root, other})
			if err != nil {
				t.Fatalf("Record: %v", err)
			}
			if _, cs, err = Since(again); err != nil {
				t.Fatal(err)
			} else if _, ok := rootRow(cs, root); !ok {
				t.Errorf("root row missing after Record: %+v", cs)
			}
		})
	}
}

// The inner root of nested workspaces is reached without following a
// link the guest put in the outer one, above the inner root.
func TestNestedRootThroughLink(t *testing.T) {
	ws1 := t.TempDir()
	ws2 := filepath.Join(ws1, "a", "b")
	write(t, ws2, "f", "", 0o644)
	elsewhere := t.TempDir()
	write(t, elsewhere, "b/.git/config", "[core]\n", 0o644)
	base, err := Take([]string{ws1, ws2}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(ws1, "a"))
	if err := os.Symlink(elsewhere, filepath.Join(ws1, "a")); err != nil {
		t.Fatal(err)
	}
	now, cs, err := Since(base)
	if err != nil {
		t.Fatal(err)
	}
	if tr := now.Tree(ws2); tr == nil || len(tr.Entries) != 0 {
		t.Fatalf("walked through the link: %+v", tr)
	}
	c, ok := rootRow(cs, ws2)
	if !ok || !c.Risky || !strings.Contains(c.Reason, "above the workspace root is now a symbolic link") {
		t.Errorf("no root row: %+v", cs)
	}
}
