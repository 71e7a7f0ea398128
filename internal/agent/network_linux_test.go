package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/api/agentapi"
)

func TestTrustCAReplacesItsBlock(t *testing.T) {
	root := t.TempDir()
	bundle := filepath.Join(root, caBundle)
	os.MkdirAll(filepath.Dir(bundle), 0o755)
	os.WriteFile(bundle, []byte("SYSTEM ROOTS\n"), 0o644)
	if err := trustCA(root, "CA-ONE"); err != nil {
		t.Fatal(err)
	}
	if err := trustCA(root, "CA-TWO"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(bundle)
	want := "SYSTEM ROOTS\n" + caMarkerBegin + "CA-TWO\n" + caMarkerEnd
	if string(got) != want {
		t.Errorf("bundle:\n%s\nwant:\n%s", got, want)
	}
	if f, _ := os.ReadFile(filepath.Join(root, caFile)); string(f) != "CA-TWO\n" {
		t.Errorf("ca file %q", f)
	}
}

func TestWriteEnvFiles(t *testing.T) {
	root := t.TempDir()
	if err := writeEnvFiles(root, []string{"HTTP_PROXY=http://192.168.127.1:3128", "Q=it's"}); err != nil {
		t.Fatal(err)
	}
	sh, _ := os.ReadFile(filepath.Join(root, profileFile))
	if !strings.Contains(string(sh), "export HTTP_PROXY='http://192.168.127.1:3128'\n") || !strings.Contains(string(sh), `export Q='it'\''s'`) {
		t.Errorf("profile:\n%s", sh)
	}
	su, _ := os.ReadFile(filepath.Join(root, sudoersFile))
	if !strings.Contains(string(su), `Defaults env_keep += "HTTP_PROXY Q"`) {
		t.Errorf("sudoers:\n%s", su)
	}
}

func TestBuildEnvOrder(t *testing.T) {
	a := account{Name: "agent", Home: "/home/agent", Shell: "/bin/bash"}
	env := buildEnv(a, []string{"HTTP_PROXY=base", "X=base"}, &agentapi.ExecRequest{Env: []string{"X=req"}})
	joined := strings.Join(env, " ")
	if !strings.Contains(joined, "HTTP_PROXY=base") || !strings.Contains(joined, "X=req") || strings.Contains(joined, "X=base") {
		t.Errorf("env %v", env)
	}
}
