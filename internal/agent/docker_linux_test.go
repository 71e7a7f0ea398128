package agent

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sbx-dev/sbx/api/agentapi"
)

func guestRoot(t *testing.T) (root, etc string) {
	t.Helper()
	root = t.TempDir()
	etc = filepath.Join(root, "etc")
	os.MkdirAll(etc, 0o755)
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0:root:/root:/bin/bash\nagent:x:1000:1000::/home/agent:/bin/bash\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\ndocker:x:101:agent\nagent:x:1000:\n"), 0o644)
	return root, etc
}

func TestWriteGitConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gitconfig")
	os.WriteFile(p, []byte("[core]\n\tpager = less\n"), 0o644)
	if err := writeGitConfig(p, agentapi.GitIdentity{Name: `Ann "A" O\Neil`, Email: "ann@example.com"}); err != nil {
		t.Fatal(err)
	}
	// Again with other values: the section is replaced, not added.
	if err := writeGitConfig(p, agentapi.GitIdentity{Name: "Ann", Email: "ann@example.org"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	want := "[core]\n\tpager = less\n" + gitMarkerBegin + "[user]\n\tname = \"Ann\"\n\temail = \"ann@example.org\"\n" + gitMarkerEnd
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("gitconfig (-want +got):\n%s", diff)
	}
	if err := writeGitConfig(p, agentapi.GitIdentity{Name: `Ann "A" O\Neil`}); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(p)
	if !strings.Contains(string(got), `name = "Ann \"A\" O\\Neil"`) || strings.Contains(string(got), "email") {
		t.Errorf("quoted name: %s", got)
	}
	if err := writeGitConfig(p, agentapi.GitIdentity{Name: "a\n[alias]"}); err == nil {
		t.Error("a name with a line break was accepted")
	}
}

func TestWriteDockerConfig(t *testing.T) {
	root, etc := guestRoot(t)
	g := NewGuest(slog.New(slog.DiscardHandler), etc)
	os.MkdirAll(filepath.Join(root, "root"), 0o700)
	home := filepath.Join(root, "home/agent")
	os.MkdirAll(filepath.Join(home, ".docker"), 0o700)
	os.WriteFile(filepath.Join(home, ".docker/config.json"), []byte(`{"auths":{"r.test":{}},"proxies":{"other":{"httpProxy":"x"}}}`), 0o600)
	env := []string{"HTTP_PROXY=http://gw:3128", "HTTPS_PROXY=http://gw:3128", "NO_PROXY=localhost", "PROXY_CA_CERT_B64=abc"}
	for _, u := range []string{"agent", "root"} {
		if err := g.writeDockerConfig(u, env); err != nil {
			t.Fatal(err)
		}
	}
	var got map[string]any
	b, _ := os.ReadFile(filepath.Join(home, ".docker/config.json"))
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"auths": map[string]any{"r.test": map[string]any{}},
		"proxies": map[string]any{
			"other":   map[string]any{"httpProxy": "x"},
			"default": map[string]any{"httpProxy": "http://gw:3128", "httpsProxy": "http://gw:3128", "noProxy": "localhost"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("agent's config.json (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(root, "root/.docker/config.json")); err != nil {
		t.Errorf("root's config.json: %v", err)
	}
}

func TestOwnPersistentScript(t *testing.T) {
	_, etc := guestRoot(t)
	g := NewGuest(slog.New(slog.DiscardHandler), etc)
	if err := g.ownPersistentScript("agent"); err != nil {
		t.Fatalf("without the script: %v", err)
	}
	p := filepath.Join(etc, persistentScript)
	os.WriteFile(p, []byte("export A=1\n"), 0o644)
	if _, _, _, err := renumberUser(etc, "agent", 4321, 4322); err != nil {
		t.Fatal(err)
	}
	if err := g.ownPersistentScript("agent"); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if o, _ := fileOwner(fi); o.uid != 4321 || o.gid != 4322 {
		t.Errorf("owner %d:%d, want 4321:4322", o.uid, o.gid)
	}
	// The renumbered user keeps its docker group.
	a, _ := lookupAccount(etc, "agent")
	if diff := cmp.Diff([]uint32{4322, 101}, a.Groups); diff != "" {
		t.Errorf("groups (-want +got):\n%s", diff)
	}
}

func TestOpenModuleSet(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"llc.ko", "bridge.ko", "veth.ko"} {
		os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644)
	}
	order := filepath.Join(dir, "order")
	os.WriteFile(order, []byte(dir+"/llc.ko\n"+dir+"/bridge.ko "+dir+"/llc.ko\n"+dir+"/gone.ko\n"+dir+"/veth.ko\n"), 0o644)
	ms, err := openModuleSet(slog.New(slog.DiscardHandler), order)
	if err != nil {
		t.Fatal(err)
	}
	if ms.len() != 3 {
		t.Fatalf("held %d modules, want 3 (the missing one left out)", ms.len())
	}
	if diff := cmp.Diff([]int{0}, ms.mods[1].deps); diff != "" {
		t.Errorf("bridge deps (-want +got):\n%s", diff)
	}
	ms.release()
	if ms.len() != 0 {
		t.Error("release kept modules")
	}
	empty, err := openModuleSet(slog.New(slog.DiscardHandler), filepath.Join(dir, "none"))
	if err != nil || empty.len() != 0 {
		t.Errorf("missing list: %d, %v", empty.len(), err)
	}
}

func TestSetupDockerWithoutDockerd(t *testing.T) {
	_, etc := guestRoot(t)
	g := NewGuest(slog.New(slog.DiscardHandler), etc)
	g.reaper = NewReaper(slog.New(slog.DiscardHandler), ReapRegistered)
	if err := g.Setup(t.Context(), &agentapi.SetupRequest{User: "agent", UID: 1000, GID: 1000, Docker: &agentapi.DockerSetup{DiskSerial: "sbx-docker"}}); err != nil {
		t.Fatal(err)
	}
	if g.docker != nil {
		t.Error("dockerd supervision started in a guest without dockerd")
	}
}
