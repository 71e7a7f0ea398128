package agent

import (
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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

// TestWriteDockerConfigRefusesLinks: the agent user owns its home and
// may leave links there for root to follow at the next boot.
func TestWriteDockerConfigRefusesLinks(t *testing.T) {
	env := []string{"HTTP_PROXY=http://gw:3128"}
	const secret = `{"auths":{"secret.test":{"auth":"cm9vdDpwdw=="}}}`
	setup := func(t *testing.T) (g *Guest, root, home, victim string) {
		root, etc := guestRoot(t)
		g = NewGuest(slog.New(slog.DiscardHandler), etc)
		home = filepath.Join(root, "home/agent")
		os.MkdirAll(home, 0o755)
		os.Chown(home, 1000, 1000)
		victim = filepath.Join(root, "etc/shadow")
		os.WriteFile(victim, []byte(secret), 0o600)
		return g, root, home, victim
	}
	unchanged := func(t *testing.T, victim string) {
		t.Helper()
		fi, err := os.Lstat(victim)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(victim)
		if o, _ := fileOwner(fi); string(b) != secret || o.uid != 0 || o.gid != 0 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s changed: %q, owner %d:%d, mode %v", victim, b, o.uid, o.gid, fi.Mode())
		}
	}
	// noSecret: the user's config.json is still the link to victim, or
	// another file without its content.
	noSecret := func(t *testing.T, home, victim string) {
		t.Helper()
		p := filepath.Join(home, ".docker/config.json")
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&os.ModeSymlink != 0 {
			return
		}
		if vi, _ := os.Stat(victim); os.SameFile(fi, vi) {
			return
		}
		if b, _ := os.ReadFile(p); strings.Contains(string(b), "secret.test") {
			t.Errorf("root's file was copied into the user's config: %s", b)
		}
	}

	t.Run("config symlink", func(t *testing.T) {
		g, _, home, victim := setup(t)
		os.Mkdir(filepath.Join(home, ".docker"), 0o700)
		os.Symlink(victim, filepath.Join(home, ".docker/config.json"))
		if err := g.writeDockerConfig("agent", env); err == nil {
			t.Error("a symlinked config.json was accepted")
		}
		unchanged(t, victim)
		noSecret(t, home, victim)
	})
	t.Run("config hard link", func(t *testing.T) {
		g, _, home, victim := setup(t)
		os.Mkdir(filepath.Join(home, ".docker"), 0o700)
		if err := os.Link(victim, filepath.Join(home, ".docker/config.json")); err != nil {
			t.Fatal(err)
		}
		if err := g.writeDockerConfig("agent", env); err == nil {
			t.Error("a hard-linked config.json was accepted")
		}
		unchanged(t, victim)
		noSecret(t, home, victim)
	})
	t.Run(".docker symlink", func(t *testing.T) {
		g, root, home, victim := setup(t)
		os.Symlink(filepath.Join(root, "etc"), filepath.Join(home, ".docker"))
		if err := g.writeDockerConfig("agent", env); err == nil {
			t.Error("a symlinked ~/.docker was accepted")
		}
		if _, err := os.Lstat(filepath.Join(root, "etc/config.json")); err == nil {
			t.Error("config.json written through the ~/.docker symlink")
		}
		unchanged(t, victim)
	})
	t.Run("home symlink", func(t *testing.T) {
		g, root, home, victim := setup(t)
		os.Remove(home)
		os.Symlink(filepath.Join(root, "etc"), home)
		if err := g.writeDockerConfig("agent", env); err == nil {
			t.Error("a symlinked home was accepted")
		}
		if _, err := os.Lstat(filepath.Join(root, "etc/.docker")); err == nil {
			t.Error(".docker made through the home symlink")
		}
		unchanged(t, victim)
	})
	t.Run("temp symlink", func(t *testing.T) {
		g, _, home, victim := setup(t)
		os.Mkdir(filepath.Join(home, ".docker"), 0o700)
		os.Symlink(victim, filepath.Join(home, ".docker/config.json.sbx-tmp"))
		if err := g.writeDockerConfig("agent", env); err != nil {
			t.Fatal(err)
		}
		unchanged(t, victim)
		p := filepath.Join(home, ".docker/config.json")
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if o, _ := fileOwner(fi); !fi.Mode().IsRegular() || o.uid != 1000 || o.gid != 1000 || fi.Mode().Perm() != 0o600 {
			t.Errorf("config.json: mode %v owner %d:%d, want a regular 0600 file of 1000:1000", fi.Mode(), o.uid, o.gid)
		}
		if b, _ := os.ReadFile(p); !strings.Contains(string(b), "http://gw:3128") {
			t.Errorf("config.json: %s", b)
		}
		if _, err := os.Lstat(p + ".sbx-tmp"); err == nil {
			t.Error("temp file left behind")
		}
	})
	t.Run("new .docker owned by the user", func(t *testing.T) {
		g, _, home, _ := setup(t)
		if err := g.writeDockerConfig("agent", env); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(filepath.Join(home, ".docker"))
		if err != nil {
			t.Fatal(err)
		}
		if o, _ := fileOwner(fi); !fi.IsDir() || o.uid != 1000 || o.gid != 1000 || fi.Mode().Perm() != 0o700 {
			t.Errorf(".docker: mode %v owner %d:%d", fi.Mode(), o.uid, o.gid)
		}
	})
}

func TestOwnPersistentScriptRefusesLinks(t *testing.T) {
	for _, link := range []string{"symlink", "hard link"} {
		t.Run(link, func(t *testing.T) {
			_, etc := guestRoot(t)
			g := NewGuest(slog.New(slog.DiscardHandler), etc)
			victim := filepath.Join(etc, "shadow")
			os.WriteFile(victim, []byte("root:*:1::::::\n"), 0o640)
			p := filepath.Join(etc, persistentScript)
			if link == "symlink" {
				os.Symlink(victim, p)
			} else if err := os.Link(victim, p); err != nil {
				t.Fatal(err)
			}
			if err := g.ownPersistentScript("agent"); err == nil {
				t.Errorf("a %s was accepted", link)
			}
			fi, _ := os.Stat(victim)
			if o, _ := fileOwner(fi); o.uid != 0 || o.gid != 0 {
				t.Errorf("%s given to %d:%d", victim, o.uid, o.gid)
			}
		})
	}
}

func TestFindDockerd(t *testing.T) {
	root := t.TempDir()
	if got := findDockerd(root); got != "" {
		t.Errorf("without dockerd: %q", got)
	}
	os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755)
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/sbin/dockerd"), []byte("x"), 0o644) // not executable
	os.WriteFile(filepath.Join(root, "usr/bin/dockerd"), []byte("x"), 0o755)  // docker-ce
	if got := findDockerd(root); got != "/usr/bin/dockerd" {
		t.Errorf("docker-ce layout: %q", got)
	}
	os.Chmod(filepath.Join(root, "usr/sbin/dockerd"), 0o755) // Debian's docker.io first
	if got := findDockerd(root); got != "/usr/sbin/dockerd" {
		t.Errorf("both: %q", got)
	}
}

// TestDockerWrapper runs the wrapper with sh against a fake client that
// prints its arguments, one a line.
func TestDockerWrapper(t *testing.T) {
	dir := t.TempDir()
	cli := filepath.Join(dir, "docker")
	os.WriteFile(cli, []byte("#!/bin/sh\nfor a; do printf '%s\\n' \"$a\"; done\n"), 0o755)
	wanted, ready := filepath.Join(dir, "wanted"), filepath.Join(dir, "ready")
	wrapper := filepath.Join(dir, "wrapper")
	os.WriteFile(wrapper, []byte(dockerWrapperScript(cli, wanted, ready)), 0o755)
	run := func(t *testing.T, ca string, args ...string) []string {
		t.Helper()
		cmd := exec.Command("sh", append([]string{wrapper}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "PROXY_CA_CERT_B64=" + ca}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	}
	ba := []string{"--build-arg", "PROXY_CA_CERT_B64"}
	l := func(parts ...any) []string { // strings and []string, flattened
		var out []string
		for _, p := range parts {
			if s, ok := p.(string); ok {
				out = append(out, strings.Fields(s)...)
			} else {
				out = append(out, p.([]string)...)
			}
		}
		return out
	}
	for _, tc := range []struct{ args, want []string }{
		{l("build ."), l("build", ba, ".")},
		{[]string{"build", "-t", "a b", "."}, l("build", ba, "-t", []string{"a b"}, ".")},
		{l("image build ."), l("image build", ba, ".")},
		{l("builder build ."), l("builder build", ba, ".")},
		{l("buildx build ."), l("buildx build", ba, ".")},
		{l("buildx --builder build build ."), l("buildx --builder build build", ba, ".")},
		{l("--context x build ."), l("--context x build", ba, ".")},
		{l("-c build build ."), l("-c build build", ba, ".")},
		{l("--context=x -D build ."), l("--context=x -D build", ba, ".")},
		{l("-H unix:///run/docker.sock --tls --tlscacert build --tlscert c --tlskey k -l debug --config build build ."),
			l("-H unix:///run/docker.sock --tls --tlscacert build --tlscert c --tlskey k -l debug --config build build", ba, ".")},
		{l("--debug --host h --log-level info image build ."), l("--debug --host h --log-level info image build", ba, ".")},
		{l("run --rm img build"), l("run --rm img build")},
		{l("image ls build"), l("image ls build")},
		{l("compose build"), l("compose build")},
		{l("ps"), l("ps")},
	} {
		if got := run(t, "Q0E=", tc.args...); !slices.Equal(got, tc.want) {
			t.Errorf("docker %q ran the client with %q, want %q", tc.args, got, tc.want)
		}
	}
	if got := run(t, "", "build", "."); !slices.Equal(got, []string{"build", "."}) {
		t.Errorf("without a CA: %q", got)
	}
	// Arguments pass unchanged: empty, spaces, glob characters.
	if got := run(t, "Q0E=", "run", "", "a b", "*", "-c", "build"); !slices.Equal(got, []string{"run", "", "a b", "*", "-c", "build"}) {
		t.Errorf("arguments changed: %q", got)
	}
	// It waits for the engine while the sandbox wants it.
	os.WriteFile(wanted, nil, 0o644)
	time.AfterFunc(300*time.Millisecond, func() { os.WriteFile(ready, nil, 0o644) })
	start := time.Now()
	if got := run(t, "", "ps"); !slices.Equal(got, []string{"ps"}) || time.Since(start) < 250*time.Millisecond {
		t.Errorf("waiting: %q after %s", got, time.Since(start))
	}
}

func TestMountWorkspaceRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "etc"), 0o755)
	os.Symlink(filepath.Join(dir, "etc"), filepath.Join(dir, "proj"))
	os.Lchown(filepath.Join(dir, "proj"), 1000, 1000) // the agent user's
	g := NewGuest(slog.New(slog.DiscardHandler), filepath.Join(dir, "etc"))
	err := g.mountWorkspace(agentapi.Workspace{Tag: "ws0", Path: filepath.Join(dir, "proj/sub")})
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("mount through a symlink: %v", err)
	}
	if len(g.mounted) != 0 {
		t.Error("mounted")
	}
	if _, err := os.Lstat(filepath.Join(dir, "etc/sub")); err == nil {
		t.Error("directory made through the symlink")
	}
	// Root's own links (a template's /var/run) are followed.
	os.Symlink(filepath.Join(dir, "etc"), filepath.Join(dir, "run"))
	os.Mkdir(filepath.Join(dir, "etc/x"), 0o755)
	if err := noUserSymlink(filepath.Join(dir, "run/x")); err != nil {
		t.Errorf("root's symlink: %v", err)
	}
}
