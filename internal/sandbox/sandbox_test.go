package sandbox

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sbx-dev/sbx/internal/paths"
)

func TestValidateName(t *testing.T) {
	good := []string{"ab", "shell-proj", "a.b-c", "0abc", "x" + string(make([]byte, 0)) + "y", "a23456789012345678901234567890123456789012345678901234567890123"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want ok", n, err)
		}
	}
	bad := []string{"", "a", "-ab", ".ab", "a b", "a_b", "ab/c", "é1", "a234567890123456789012345678901234567890123456789012345678901234"}
	for _, n := range bad {
		if err := ValidateName(n); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", n, err)
		}
	}
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"shell-My Project":  "shell-My-Project",
		"shell-__init__":    "shell-init",
		"shell-.hidden":     "shell-.hidden",
		"..x":               "x",
		"shell-ünïcode-dir": "shell-n-code-dir",
	} {
		if got := CleanName(in); got != want {
			t.Errorf("CleanName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"512m": 512 << 20, "2g": 2 << 30, "2GiB": 2 << 30, "20G": 20 << 30, "1024": 1024 << 20, "1t": 1 << 40, "4096M": 4 << 30,
	} {
		got, err := ParseSize(in, "m")
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1g", "0", "2x", "1.5g", "99999999999t"} {
		if _, err := ParseSize(in, "m"); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
}

func TestStoreLifecycle(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(paths.Dirs{Data: dir, Runtime: filepath.Join(dir, "rt")})
	cfg := Config{ID: NewID(), Name: "demo", Agent: "shell", Workspaces: []Workspace{{Path: "/w"}}}
	sb, err := s.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if all, _ := s.List(); len(all) != 0 {
		t.Errorf("an uncommitted sandbox lists: %v", all)
	}
	if err := s.Commit(sb); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ConfigFile, StateFile} {
		if _, err := os.Stat(sb.Path(f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
	if _, err := s.Create(Config{ID: NewID(), Name: "demo"}); !errors.Is(err, ErrNameTaken) {
		t.Errorf("second create with the same name: %v", err)
	}
	got, err := s.Get(cfg.ID)
	if err != nil || got.Config.Name != "demo" {
		t.Fatalf("Get by id: %v %v", got, err)
	}
	st, err := s.Status(sb)
	if err != nil || st.Status != StatusStopped {
		t.Errorf("new sandbox status %v %v", st, err)
	}
	// A recorded running state whose supervisor is gone reads as crashed.
	if err := s.SetState(sb, State{Status: StatusRunning, PID: 1 << 22}); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Status(sb); st.Status != StatusCrashed {
		t.Errorf("dead supervisor: status %s, want crashed", st.Status)
	}
	unlock, err := s.TryLock(sb)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryLock(sb); !errors.Is(err, ErrBusy) {
		t.Errorf("second TryLock: %v, want ErrBusy", err)
	}
	unlock()
	if err := s.Remove(sb); err != nil {
		t.Fatal(err)
	}
	if all, _ := s.List(); len(all) != 0 {
		t.Errorf("after remove: %v", all)
	}
	if _, err := s.Get("demo"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after remove: %v", err)
	}
}

func TestParsePort(t *testing.T) {
	for in, want := range map[string]Port{
		"80":              {HostIP: "127.0.0.1", SandboxPort: 80},
		"8080:80":         {HostIP: "127.0.0.1", HostPort: 8080, SandboxPort: 80},
		"0.0.0.0:8080:80": {HostIP: "0.0.0.0", HostPort: 8080, SandboxPort: 80},
		"[::1]:9000:3000": {HostIP: "::1", HostPort: 9000, SandboxPort: 3000},
		":3000":           {HostIP: "127.0.0.1", SandboxPort: 3000},
		"127.0.0.1::3000": {HostIP: "127.0.0.1", SandboxPort: 3000},
	} {
		got, err := ParsePort(in)
		if err != nil || got != want {
			t.Errorf("ParsePort(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "x", "70000", "1:2:3:4", "host:80:80", "[::1:80"} {
		if _, err := ParsePort(in); err == nil {
			t.Errorf("ParsePort(%q) succeeded", in)
		}
	}
}

// Found by the ninth outside review: a config whose id was "../x" made
// `sbx rm` delete a folder outside the store (the runtime folder is
// named by the id). Such a config is damaged; its folder is what rm
// takes out.
func TestLoadRefusesForeignID(t *testing.T) {
	dirs := paths.Dirs{Data: t.TempDir(), Runtime: t.TempDir()}
	s := NewStore(dirs)
	sb, err := s.Create(Config{ID: "0123456789ab", Name: "good"})
	if err == nil {
		err = s.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := s.DirOf("0123456789ab")
	data, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	data = bytes.Replace(data, []byte(`"0123456789ab"`), []byte(`"../victim"`), 1)
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("good"); err == nil {
		t.Error("a config with a foreign id was loaded")
	}
	if d := s.Damaged(); len(d) != 1 || d[0].Placeholder().Config.ID != "0123456789ab" {
		t.Errorf("damaged: %+v", d)
	}
}
