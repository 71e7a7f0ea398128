package template

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sbx-dev/sbx/internal/paths"
)

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDetectHostRelease(t *testing.T) {
	const osRelease = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n"
	const deb822 = `Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
`
	tests := []struct {
		name  string
		files map[string]string
		want  HostRelease
		err   error
	}{
		{
			name: "deb822",
			files: map[string]string{
				"etc/apt/sources.list.d/debian.sources":              deb822,
				"etc/apt/sources.list.d/other.list.disabled-by-x":    "deb http://other.example/apt bookworm main\n",
				"etc/apt/sources.list.d/nodesource.sources.disabled": "Types: deb\nURIs: http://node.example\nSuites: nodistro\n",
			},
			want: HostRelease{Suite: "bookworm", Mirror: "http://mirror.example/debian"},
		},
		{
			name: "one-line with options, security first",
			files: map[string]string{
				"etc/apt/sources.list": "# deb http://commented.example/debian bookworm main\n" +
					"deb http://sec.example/debian-security bookworm-security main\n" +
					"deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main contrib\n",
			},
			want: HostRelease{Suite: "bookworm", Mirror: "http://one.example/debian"},
		},
		{
			name: "only updates suite",
			files: map[string]string{
				"etc/apt/sources.list": "deb http://upd.example/debian bookworm-updates main\n",
			},
			want: HostRelease{Suite: "bookworm", Mirror: "http://upd.example/debian"},
		},
		{
			name:  "disabled stanza",
			files: map[string]string{"etc/apt/sources.list.d/d.sources": "Enabled: no\nTypes: deb\nURIs: http://x.example\nSuites: bookworm\n"},
			err:   ErrNoMirror,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeFile(t, filepath.Join(root, "etc/os-release"), osRelease)
			for p, d := range tt.files {
				writeFile(t, filepath.Join(root, p), d)
			}
			got, err := DetectHostRelease(root)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// fakeTemplate writes a manifest and an image as a build would.
func fakeTemplate(t *testing.T, cache, name, id string) {
	t.Helper()
	dir := filepath.Join(cache, "templates")
	writeFile(t, filepath.Join(dir, id+".ext4"), "image "+id)
	b, err := json.Marshal(manifest{Version: 1, Name: name, ID: id, Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Suite: "bookworm"})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, name+".json"), string(b))
}

func TestLookupListRemove(t *testing.T) {
	cache := t.TempDir()
	if l, err := List(cache); err != nil || len(l) != 0 {
		t.Fatalf("empty cache: List = %v, %v", l, err)
	}
	fakeTemplate(t, cache, "shell", "aaaa")
	fakeTemplate(t, cache, "claude", "bbbb")
	fakeTemplate(t, cache, "alias", "bbbb")

	got, err := Lookup(cache, "shell")
	if err != nil {
		t.Fatal(err)
	}
	want := Template{Name: "shell", ID: "aaaa", Image: filepath.Join(cache, "templates", "aaaa.ext4"),
		Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), SizeBytes: int64(len("image aaaa"))}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Lookup (-want +got):\n%s", diff)
	}
	if _, err := Lookup(cache, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(nope) = %v, want ErrNotFound", err)
	}
	if _, err := Lookup(cache, "../x"); err == nil {
		t.Error("Lookup(../x): no error")
	}
	l, err := List(cache)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tp := range l {
		names = append(names, tp.Name)
	}
	if diff := cmp.Diff([]string{"alias", "claude", "shell"}, names); diff != "" {
		t.Errorf("List names (-want +got):\n%s", diff)
	}

	inUse := func(id string) bool { return id == "aaaa" }
	if err := Remove(cache, "shell", inUse); !errors.Is(err, ErrInUse) {
		t.Errorf("Remove in-use = %v, want ErrInUse", err)
	}
	if _, err := Lookup(cache, "shell"); err != nil {
		t.Errorf("in-use template was touched: %v", err)
	}
	// Removing one of two names keeps the shared image.
	if err := Remove(cache, "claude", inUse); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cache, "templates", "bbbb.ext4")); err != nil {
		t.Errorf("shared image removed: %v", err)
	}
	if err := Remove(cache, "alias", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cache, "templates", "bbbb.ext4")); !os.IsNotExist(err) {
		t.Errorf("image of last name not removed: %v", err)
	}
	if err := Remove(cache, "alias", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove twice = %v, want ErrNotFound", err)
	}
}

// TestRealDefaultTemplate checks the default template in the sbx cache
// (paths.Resolve: SBX_CACHE_DIR or XDG_CACHE_HOME). Building it takes
// root and over a minute, and on a fresh machine the VM tests (run in
// parallel with this package) are what build it, so it skips when the
// template is absent, even under SBX_TEST_REQUIRE_VM=1; the VM tests
// should assert the same once they have built it.
func TestRealDefaultTemplate(t *testing.T) {
	dirs, err := paths.Resolve()
	if err != nil {
		t.Fatalf("resolve the sbx cache: %v", err)
	}
	tp, err := Lookup(dirs.Cache, DefaultName)
	if err != nil {
		t.Skipf("no default template in %s yet (the VM tests build it): %v", dirs.Cache, err)
	}
	st, err := os.Stat(tp.Image)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o222 != 0 {
		t.Errorf("image %s is writable (%v)", tp.Image, st.Mode())
	}
	if !strings.HasSuffix(tp.Image, tp.ID+".ext4") {
		t.Errorf("image %s not named by id %s", tp.Image, tp.ID)
	}
}

func TestParseAptProxy(t *testing.T) {
	dump := `Acquire "";
Acquire::http "";
Acquire::http::Proxy "http://10.0.0.1:3128/";
Acquire::https::Proxy "DIRECT";
Acquire::cdrom::mount "/media/cdrom/";
Acquire::ftp::Proxy "ftp://x/";
`
	got := strings.Join(parseAptProxy(dump), " ")
	want := "-o Acquire::http::Proxy=http://10.0.0.1:3128/ -o Acquire::https::Proxy=DIRECT"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if len(parseAptProxy("Acquire \"\";\n")) != 0 {
		t.Error("options without a proxy")
	}
}

func TestRecipeKeys(t *testing.T) {
	s, _ := builtin(DefaultName)
	a, _ := builtin(AgentsName)
	if s.key() == a.key() || len(s.key()) != 16 {
		t.Errorf("keys %q %q", s.key(), a.key())
	}
	if !IsBuiltin("agents") || IsBuiltin("mine") {
		t.Error("IsBuiltin")
	}
	if recipeAlias("shell", s.key())[0] != '.' {
		t.Error("recipe alias must be hidden from List")
	}
	v, err := PinnedVersions()
	if err != nil || v["node"] == "" || v["claude"] == "" || len(v) != len(AgentCLIs)+1 {
		t.Errorf("pinned versions %v %v", v, err)
	}
}

// TestAgentsLockInStep: the committed lock pins exactly package.json's
// versions and records no download addresses.
func TestAgentsLockInStep(t *testing.T) {
	var pj struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	var lock struct {
		Packages map[string]struct {
			Version      string            `json:"version"`
			Resolved     string            `json:"resolved"`
			Dependencies map[string]string `json:"dependencies"`
		} `json:"packages"`
	}
	if err := json.Unmarshal(agentsPackageJSON, &pj); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(agentsLock, &lock); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(pj.Dependencies, lock.Packages[""].Dependencies); diff != "" {
		t.Errorf("lock root dependencies differ from package.json (run `make agents-lock`):\n%s", diff)
	}
	for name, want := range pj.Dependencies {
		if got := lock.Packages["node_modules/"+name].Version; got != want {
			t.Errorf("lock has %s %s, package.json pins %s", name, got, want)
		}
	}
	for p, e := range lock.Packages {
		if e.Resolved != "" {
			t.Errorf("lock records a download address for %s", p)
		}
	}
}

// A private mirror's credentials are for the build only: the mirror the
// build reports and the tools' output it passes on must not show them.
func TestHostMirrorCredentialsNotShown(t *testing.T) {
	for _, tt := range []struct{ uri, secret, safe, wget string }{
		{"https://alice:s3cr3tpass@host/debian", "s3cr3tpass", "https://host/debian", "https://alice:*password*@host/x"},
		{"https://TOKEN@host/debian", "TOKEN", "https://host/debian", "https://TOKEN@host/x"},
		{"https://alice:p%40ss%2Fword@host/debian", "p@ss/word", "https://host/debian", "https://alice:*password*@host/x"},
	} {
		t.Run(tt.secret, func(t *testing.T) {
			root := t.TempDir()
			writeFile(t, filepath.Join(root, "etc/os-release"), "VERSION_CODENAME=bookworm\n")
			writeFile(t, filepath.Join(root, "etc/apt/sources.list"), "deb "+tt.uri+" bookworm main\n")
			hr, err := DetectHostRelease(root)
			if err != nil {
				t.Fatal(err)
			}
			if hr.Mirror != tt.uri {
				t.Errorf("Mirror = %q, want %q (debootstrap needs the credentials)", hr.Mirror, tt.uri)
			}
			if got := hr.SafeMirror(); got != tt.safe {
				t.Errorf("SafeMirror() = %q, want %q", got, tt.safe)
			}
			var out strings.Builder
			w, flush := redactProgress(&out, hr.Mirror)
			// Split writes, as a pipe delivers them.
			line := "E: Failed getting release file " + tt.uri + "/dists/bookworm/Release\n" +
				"URL:" + tt.wget + " [1/1]\n" +
				"token " + tt.secret + " decoded, last line without newline"
			for i := 0; i < len(line); i += 7 {
				w.Write([]byte(line[i:min(i+7, len(line))]))
			}
			flush()
			if strings.Contains(out.String(), tt.secret) || strings.Contains(out.String(), "@host") {
				t.Errorf("progress shows the credentials:\n%s", out.String())
			}
			if !strings.Contains(out.String(), tt.safe+"/dists/bookworm/Release\n") || !strings.HasSuffix(out.String(), "without newline") {
				t.Errorf("progress lost output:\n%s", out.String())
			}
		})
	}
	if w, _ := redactProgress(io.Discard, "http://deb.debian.org/debian"); w != io.Discard {
		t.Error("progress of a mirror without credentials is wrapped")
	}
}

// The image's apt sources lose the user info of every URI and nothing else.
func TestScrubAptSources(t *testing.T) {
	root := t.TempDir()
	files := map[string][2]string{
		"etc/apt/sources.list": {
			"# deb https://alice:old@host/debian bookworm main\n" +
				"deb https://alice:s3cr3tpass@host/debian bookworm main contrib\n" +
				"deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] https://TOKEN@host/debian-security bookworm-security main\n" +
				"deb http://deb.debian.org/debian bookworm-updates main\n",
			"# deb https://host/debian bookworm main\n" +
				"deb https://host/debian bookworm main contrib\n" +
				"deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] https://host/debian-security bookworm-security main\n" +
				"deb http://deb.debian.org/debian bookworm-updates main\n",
		},
		"etc/apt/sources.list.d/x.list": {
			"deb mirror+https://u%40corp:p%3Ass@host:8443/apt/debian bookworm main\n",
			"deb mirror+https://host:8443/apt/debian bookworm main\n",
		},
		"etc/apt/sources.list.d/x.sources": {
			"Types: deb deb-src\nURIs: https://alice:s3cr3tpass@host/debian http://plain.example/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n" +
				"Types: deb\nURIs: https://TOKEN@host/other\nSuites: bookworm\nComponents: main\n",
			"Types: deb deb-src\nURIs: https://host/debian http://plain.example/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n" +
				"Types: deb\nURIs: https://host/other\nSuites: bookworm\nComponents: main\n",
		},
		"etc/apt/sources.list.d/clean.list": {
			"deb http://deb.debian.org/debian bookworm main\n",
			"deb http://deb.debian.org/debian bookworm main\n",
		},
	}
	for p, f := range files {
		writeFile(t, filepath.Join(root, p), f[0])
	}
	if err := os.Chmod(filepath.Join(root, "etc/apt/sources.list.d/x.list"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := scrubAptSources(root); err != nil {
		t.Fatal(err)
	}
	for p, f := range files {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(f[1], string(b)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", p, diff)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/apt/sources.list.d/x.list")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("x.list mode changed: %v, %v", fi.Mode(), err)
	}

	// A symlink could lead out of the tree (to the host's own sources).
	outside := filepath.Join(t.TempDir(), "host.list")
	writeFile(t, outside, "deb https://alice:s3cr3tpass@host/debian bookworm main\n")
	if err := os.Symlink(outside, filepath.Join(root, "etc/apt/sources.list.d/link.list")); err != nil {
		t.Fatal(err)
	}
	if err := scrubAptSources(root); err == nil {
		t.Error("symlinked source: no error")
	}
	if b, _ := os.ReadFile(outside); !strings.Contains(string(b), "s3cr3tpass") {
		t.Error("file outside the tree was rewritten")
	}

	// No sources at all is fine.
	if err := scrubAptSources(t.TempDir()); err != nil {
		t.Errorf("empty tree: %v", err)
	}
}
