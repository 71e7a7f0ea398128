package template

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tentry is one entry of a test layer.
type tentry struct {
	name   string
	typ    byte
	body   string
	mode   int64
	uid    int
	link   string
	xattrs map[string]string
}

func layerTar(t testing.TB, entries []tentry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.uid,
			Linkname: e.link, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Typeflag == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testLayer(t testing.TB, entries []tentry) v1.Layer {
	t.Helper()
	b := layerTar(t, entries)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

const (
	testPasswd = "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/sh\n"
	testGroup  = "root:x:0:\nagent:x:1000:\n"
)

// testImage has a base layer with the agent user and files, and an upper
// layer that deletes and replaces some of them.
func testImage(t testing.TB, passwd string) v1.Image {
	t.Helper()
	base := testLayer(t, []tentry{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/passwd", body: passwd},
		{name: "etc/group", body: testGroup},
		{name: "home/agent/", typ: tar.TypeDir, mode: 0o750, uid: 1000},
		{name: "home/agent/.profile", body: "# profile\n", uid: 1000, mode: 0o600},
		{name: "bin/", typ: tar.TypeDir},
		{name: "bin/tool", body: "#!/bin/sh\n", mode: 0o4755},
		{name: "gone/file", body: "deleted by the upper layer\n"},
		{name: "opq/old", body: "hidden by an opaque folder\n"},
		{name: "kept", body: "from the base\n"},
		{name: "replaced", body: "old\n"},
		{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		{name: "data/x", body: "x\n", xattrs: map[string]string{"user.sbx": "yes"}},
	})
	upper := testLayer(t, []tentry{
		{name: "gone/.wh.file"},
		{name: "opq/.wh..wh..opq"},
		{name: "opq/new", body: "new\n"},
		{name: "replaced", body: "new\n"},
		{name: "lnk", typ: tar.TypeSymlink, link: "kept"},
		{name: "hard", typ: tar.TypeLink, link: "kept"},
	})
	img, err := mutate.AppendLayers(empty.Image, base, upper)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = Platform.OS, Platform.Architecture
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestNameFor(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5000/test/img:1": "127.0.0.1-5000-test-img-1",
		"ubuntu":                    "ubuntu",
		"team/app@sha256:abc":       "team-app-sha256-abc",
		"../..//":                   "image",
		".hidden":                   "hidden",
		"a  b":                      "a-b",
		strings.Repeat("x", 80):     strings.Repeat("x", 63),
	} {
		if got := NameFor(in); got != want {
			t.Errorf("NameFor(%q) = %q, want %q", in, got, want)
		}
		if err := validName(NameFor(in)); err != nil {
			t.Errorf("NameFor(%q) is not valid: %v", in, err)
		}
	}
	for in, want := range map[[2]string]string{
		{"/x/img.tar", "test/img:2"}: "test-img-2",
		{"/x/my-img.tar.gz", ""}:     "my-img",
		{"/x/layout", ""}:            "layout",
		{"/x/saved.sbx", ""}:         "saved",
	} {
		if got := defaultFileName(in[0], in[1]); got != want {
			t.Errorf("defaultFileName(%q, %q) = %q, want %q", in[0], in[1], got, want)
		}
	}
	if !IsImageRef("127.0.0.1:5000/test/img:1") || !IsImageRef("repo/app") || IsImageRef("mytemplate") || IsImageRef("UPPER/case") {
		t.Error("IsImageRef misjudges")
	}
}

// extractImage extracts img as LoadFile does, into a temp folder.
func extractImage(t *testing.T, img v1.Image) (string, error) {
	t.Helper()
	dir := t.TempDir()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return dir, flattenLayers(context.Background(), layers, dir, extractOptions{Owners: os.Geteuid() == 0})
}

func TestExtractWhiteoutsAndAttributes(t *testing.T) {
	dir, err := extractImage(t, testImage(t, testPasswd))
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	for p, want := range map[string]string{
		"kept": "from the base\n", "replaced": "new\n", "opq/new": "new\n", "lnk": "from the base\n", "hard": "from the base\n",
		"etc/passwd": testPasswd,
	} {
		if got := read(p); got != want {
			t.Errorf("/%s = %q, want %q", p, got, want)
		}
	}
	for _, p := range []string{"gone/file", "opq/old", "gone/.wh.file", "opq/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("/%s exists after the whiteout (err %v)", p, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(dir, "lnk")); err != nil || l != "kept" {
		t.Errorf("lnk -> %q (%v), want kept", l, err)
	}
	st1, _ := os.Stat(filepath.Join(dir, "kept"))
	st2, _ := os.Stat(filepath.Join(dir, "hard"))
	if st1 == nil || st2 == nil || !os.SameFile(st1, st2) {
		t.Error("hard is not a hard link to kept")
	}
	if fi, err := os.Stat(filepath.Join(dir, "bin/tool")); err != nil || fi.Mode() != 0o755|os.ModeSetuid {
		t.Errorf("bin/tool mode %v (%v), want setuid 0755", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "home/agent")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("home/agent mode %v (%v), want 0750", fi.Mode(), err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "kept")); fi == nil || !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("kept mtime not kept: %v", fi)
	}
	if os.Geteuid() == 0 {
		uid, _ := fileOwner(t, filepath.Join(dir, "home/agent/.profile"))
		if uid != 1000 {
			t.Errorf("home/agent/.profile uid %d, want 1000", uid)
		}
		if fi, err := os.Lstat(filepath.Join(dir, "dev/null")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
			t.Errorf("dev/null is not a char device: %v %v", fi, err)
		}
	}
	if err := checkAgentUser(dir); err != nil {
		t.Errorf("checkAgentUser: %v", err)
	}
}

func TestExtractRejectsEscapes(t *testing.T) {
	outside := t.TempDir()
	for name, entries := range map[string][]tentry{
		"dotdot":        {{name: "../escaped", body: "x"}},
		"nested dotdot": {{name: "a/../../escaped", body: "x"}},
		"hard link out": {{name: "h", typ: tar.TypeLink, link: "../../../../" + outside + "/escaped"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "root")
			os.Mkdir(dir, 0o755)
			err := extractTar(bytes.NewReader(layerTar(t, entries)), dir, extractOptions{})
			if err == nil {
				t.Fatal("extract succeeded")
			}
			if _, serr := os.Stat(filepath.Join(outside, "escaped")); serr == nil {
				t.Fatal("a file was written outside the root")
			}
			if _, serr := os.Stat(filepath.Join(filepath.Dir(dir), "escaped")); serr == nil {
				t.Fatal("a file was written next to the root")
			}
			t.Logf("error: %v", err)
		})
	}
	// An entry below a symbolic link is shadowed by it (the link came
	// from the same or an upper layer): skipped, never written through it.
	for name, entries := range map[string][]tentry{
		"through symlink": {{name: "s", typ: tar.TypeSymlink, link: outside}, {name: "s/escaped", body: "x"}},
		"abs symlink dir": {{name: "s", typ: tar.TypeSymlink, link: "/"}, {name: "s/" + strings.TrimPrefix(outside, "/") + "/escaped", body: "x"}},
		"deep":            {{name: "s", typ: tar.TypeSymlink, link: outside}, {name: "s/a/b/escaped", body: "x"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := extractTar(bytes.NewReader(layerTar(t, entries)), dir, extractOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, serr := os.Stat(filepath.Join(outside, "escaped")); serr == nil {
				t.Fatal("a file was written outside the root")
			}
			if fi, err := os.Lstat(filepath.Join(dir, "s")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("s is not the symbolic link: %v %v", fi, err)
			}
		})
	}
	// Symbolic links themselves may point anywhere: they are resolved in
	// the guest, not here.
	dir := t.TempDir()
	if err := extractTar(bytes.NewReader(layerTar(t, []tentry{{name: "abs", typ: tar.TypeSymlink, link: "/etc/passwd"}})), dir, extractOptions{}); err != nil {
		t.Fatalf("absolute symlink: %v", err)
	}
}

func TestCheckAgentUser(t *testing.T) {
	for name, tc := range map[string]struct{ passwd, group, want string }{
		"ok":            {testPasswd, testGroup, ""},
		"no user":       {"root:x:0:0:root:/root:/bin/sh\n", testGroup, "no line for agent"},
		"wrong uid":     {"agent:x:1001:1000::/home/agent:/bin/sh\n", testGroup, "uid 1001"},
		"no group":      {testPasswd, "root:x:0:\n", "no group with gid 1000"},
		"no passwd":     {"", testGroup, "no readable /etc/passwd"},
		"no group file": {testPasswd, "", "no readable /etc/group"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.passwd != "" {
				writeFile(t, filepath.Join(dir, "etc/passwd"), tc.passwd)
			}
			if tc.group != "" {
				writeFile(t, filepath.Join(dir, "etc/group"), tc.group)
			}
			err := checkAgentUser(dir)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			mu, ok := errors.AsType[*MissingUserError](err)
			if !ok || mu.User != AgentUser || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a MissingUserError about %q", err, tc.want)
			}
		})
	}
}

// needImport skips unless this process can import images into
// templates: root and mkfs.ext4 (both present in CI).
func needImport(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, p := range []string{"mkfs.ext4", "debugfs", "qemu-img", "e2fsck", "resize2fs"} {
		if _, err := tool(p, ""); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		if os.Getenv("SBX_TEST_REQUIRE_VM") == "1" {
			t.Fatalf("need %s (SBX_TEST_REQUIRE_VM=1)", strings.Join(missing, ", "))
		}
		t.Skipf("need %s", strings.Join(missing, ", "))
	}
}

// debugfs runs a debugfs request against an ext4 image.
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	p, _ := tool("debugfs", "")
	out, err := exec.Command(p, "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %s: %v: %s", req, err, out)
	}
	return string(out)
}

// checkImported checks the image of a template made from testImage.
func checkImported(t *testing.T, tp Template) {
	t.Helper()
	if got := debugfs(t, tp.Image, "cat /etc/passwd"); !strings.Contains(got, testPasswd) {
		t.Errorf("/etc/passwd in the image: %q", got)
	}
	if got := debugfs(t, tp.Image, "cat /replaced"); !strings.Contains(got, "new") {
		t.Errorf("/replaced in the image: %q", got)
	}
	if got := debugfs(t, tp.Image, "stat /gone/file"); !strings.Contains(got, "not found") {
		t.Errorf("/gone/file survived its whiteout: %q", got)
	}
	if got := debugfs(t, tp.Image, "stat /home/agent/.profile"); !strings.Contains(got, "User:  1000") {
		t.Errorf("/home/agent/.profile owner: %q", got)
	}
	if got := debugfs(t, tp.Image, "stat /"); !strings.Contains(got, "Mode:  0755") {
		t.Errorf("root folder mode: %q", got)
	}
	if got := debugfs(t, tp.Image, "stat /tmp"); !strings.Contains(got, "Mode:  01777") {
		t.Errorf("/tmp mode: %q", got)
	}
}

func TestLoadFileFormats(t *testing.T) {
	needImport(t)
	ctx := context.Background()
	cache := t.TempDir()
	files := t.TempDir()
	img := testImage(t, testPasswd)

	// docker save tarball.
	tag, _ := name.NewTag("test/img:1")
	dockerTar := filepath.Join(files, "docker.tar")
	if err := tarball.WriteToFile(dockerTar, tag, img); err != nil {
		t.Fatal(err)
	}
	// OCI layout folder, with a name annotation.
	lay := filepath.Join(files, "layout")
	p, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{annotationRefName: "test/oci:2"})); err != nil {
		t.Fatal(err)
	}
	// OCI archive: a tar of the layout.
	ociTar := filepath.Join(files, "oci-archive.tar")
	tarFolder(t, lay, ociTar)

	// A gzip-compressed docker save tarball.
	gzTar := filepath.Join(files, "docker.tar.gz")
	gzipFile(t, dockerTar, gzTar)

	for _, tc := range []struct{ path, name string }{
		{dockerTar, "test-img-1"},
		{gzTar, "test-img-1-archive"},
		{lay, "test-oci-2"},
		{ociTar, "test-oci-2-archive"},
	} {
		t.Run(filepath.Base(tc.path), func(t *testing.T) {
			var progress bytes.Buffer
			opts := ImportOptions{Progress: &progress}
			if strings.HasSuffix(tc.name, "-archive") {
				opts.Name = tc.name
			}
			start := time.Now()
			tp, err := LoadFile(ctx, cache, tc.path, opts)
			if err != nil {
				t.Fatalf("LoadFile: %v\n%s", err, progress.String())
			}
			t.Logf("loaded in %s", time.Since(start))
			if tp.Name != tc.name {
				t.Errorf("name %q, want %q", tp.Name, tc.name)
			}
			if !strings.HasPrefix(tp.Source, "file "+tc.path+"@sha256:") {
				t.Errorf("source %q, want file %s@sha256:...", tp.Source, tc.path)
			}
			if src, err := FileSource(cache, tc.path); err != nil || src != tp.Source {
				t.Errorf("FileSource = %q, %v; want %q", src, err, tp.Source)
			}
			// Images without bash get a hint that works for them: exec
			// runs a program directly, run and the agents need bash.
			if p := progress.String(); !strings.Contains(p, "no bash") || !strings.Contains(p, "sbx exec NAME /bin/PROGRAM") || strings.Contains(p, "shell . --") {
				t.Errorf("no-bash hint: %s", p)
			}
			checkImported(t, tp)
		})
	}
	entries, _ := os.ReadDir(templatesDir(cache))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("leftover %s", e.Name())
		}
	}

	// Loading again replaces the template; the old image goes once
	// nothing uses it, and stays while a sandbox does.
	old, _ := Lookup(cache, "test-img-1")
	inUse := true
	opts := ImportOptions{InUse: func(id string) bool { return inUse && id == old.ID }}
	again, err := LoadFile(ctx, cache, dockerTar, opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.ID == old.ID {
		t.Skip("mkfs.ext4 made the same image twice; nothing to replace")
	}
	if _, err := os.Stat(old.Image); err != nil {
		t.Errorf("image in use was deleted: %v", err)
	}
	inUse = false
	old = again
	if _, err := LoadFile(ctx, cache, dockerTar, opts); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old.Image); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("replaced image not deleted: %v", err)
	}
}

func gzipFile(t *testing.T, in, out string) {
	t.Helper()
	b, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadFileErrors(t *testing.T) {
	needImport(t)
	ctx := context.Background()
	cache := t.TempDir()
	files := t.TempDir()
	write := func(file string, img v1.Image) string {
		t.Helper()
		p := filepath.Join(files, file)
		tag, _ := name.NewTag("test/" + strings.TrimSuffix(file, ".tar") + ":1")
		if err := tarball.WriteToFile(p, tag, img); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noUser := write("nouser.tar", testImage(t, "root:x:0:0:root:/root:/bin/sh\n"))
	_, err := LoadFile(ctx, cache, noUser, ImportOptions{})
	if mu, ok := errors.AsType[*MissingUserError](err); !ok || mu.User != AgentUser {
		t.Errorf("image without agent: err = %v, want MissingUserError", err)
	}

	escape, err := mutate.AppendLayers(testImage(t, testPasswd), testLayer(t, []tentry{{name: "../../escaped", body: "x"}}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = LoadFile(ctx, cache, write("escape.tar", escape), ImportOptions{})
	if !errors.Is(err, ErrUnsafeEntry) {
		t.Errorf("escaping entry: err = %v, want ErrUnsafeEntry", err)
	}

	_, err = LoadFile(ctx, cache, write("builtin.tar", testImage(t, testPasswd)), ImportOptions{Name: DefaultName})
	if !errors.Is(err, ErrBuiltinName) {
		t.Errorf("built-in name: err = %v, want ErrBuiltinName", err)
	}

	junk := filepath.Join(files, "junk.tar")
	os.WriteFile(junk, []byte("not a tarball at all, just some text"), 0o644)
	if _, err := LoadFile(ctx, cache, junk, ImportOptions{}); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("junk: err = %v, want ErrUnknownFormat", err)
	}
	if _, err := LoadFile(ctx, cache, t.TempDir(), ImportOptions{}); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("empty folder: err = %v, want ErrUnknownFormat", err)
	}
	if _, err := LoadFile(ctx, cache, filepath.Join(files, "missing.tar"), ImportOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNotExist", err)
	}

	all, _ := List(cache)
	if len(all) != 0 {
		t.Errorf("failed loads left templates: %v", all)
	}
	entries, _ := os.ReadDir(templatesDir(cache))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") || strings.HasSuffix(e.Name(), ".ext4") {
			t.Errorf("failed loads left %s", e.Name())
		}
	}
}

func TestPull(t *testing.T) {
	needImport(t)
	ctx := context.Background()
	cache := t.TempDir()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/test/img:1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, testImage(t, testPasswd)); err != nil {
		t.Fatal(err)
	}
	tp, err := Pull(ctx, cache, ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tp.Name != NameFor(ref) || !PulledFrom(tp, ref) || !strings.Contains(tp.Source, "@sha256:") {
		t.Errorf("pulled template %+v", tp)
	}
	checkImported(t, tp)
	var progress bytes.Buffer
	again, err := Pull(ctx, cache, ref, PullOptions{ImportOptions: ImportOptions{Progress: &progress}})
	if err != nil || again.ID != tp.ID || !strings.Contains(progress.String(), "up to date") {
		t.Errorf("second pull: %+v %v %q", again, err, progress.String())
	}
	_, err = Pull(ctx, cache, host+"/test/missing:1", PullOptions{})
	if re, ok := errors.AsType[*RegistryError](err); !ok || re.Status != 404 {
		t.Errorf("pull of a missing image: %v, want a RegistryError with status 404", err)
	}
	srv.Close()
	_, err = Pull(ctx, cache, ref, PullOptions{})
	re, ok := errors.AsType[*RegistryError](err)
	if !ok || re.Status != 0 || re.Registry != host {
		t.Fatalf("pull from a closed registry: %v", err)
	}
	if cached, ok := FindPulled(cache, ref); !ok || cached.ID != tp.ID {
		t.Errorf("FindPulled = %+v, %v", cached, ok)
	}
	if _, ok := FindPulled(cache, host+"/test/other:1"); ok {
		t.Error("FindPulled found another reference's template")
	}
}

func tarFolder(t *testing.T, dir, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func fileOwner(t *testing.T, p string) (int, int) {
	t.Helper()
	out, err := exec.Command("stat", "-c", "%u %g", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	var u, g int
	fmt.Sscan(string(out), &u, &g)
	return u, g
}

// FileSource hashes the file itself: an image file rewritten in place
// (same size, modification time put back) has a new source, whatever its
// headers say; an unchanged one is not read again.
func TestFileSource(t *testing.T) {
	cache := t.TempDir()
	p := filepath.Join(t.TempDir(), "img.tar.gz")
	os.WriteFile(p, []byte("first content"), 0o644)
	mtime := time.Unix(1700000000, 0)
	os.Chtimes(p, mtime, mtime)
	s1, err := FileSource(cache, p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256File(t, p)
	if s1 != "file "+p+"@sha256:"+sum {
		t.Errorf("source %q, want the file's sha256 %s", s1, sum)
	}
	if _, err := os.Stat(filepath.Join(templatesDir(cache), hashCacheFile)); err != nil {
		t.Errorf("hash not remembered: %v", err)
	}
	// The cache answers for an unchanged file: a poisoned entry shows it.
	hc := openHashCache(cache)
	e := hc.entries[p]
	e.Sum = strings.Repeat("0", 64)
	hc.entries[p], hc.dirty = e, true
	hc.save()
	if s, _ := FileSource(cache, p); !strings.HasSuffix(s, e.Sum) {
		t.Errorf("unchanged file hashed again: %q", s)
	}
	// Rewritten in place, same size, old modification time.
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteString("other content")
	f.Close()
	os.Chtimes(p, mtime, mtime)
	s2, err := FileSource(cache, p)
	if err != nil {
		t.Fatal(err)
	}
	if s2 == s1 || s2 != "file "+p+"@sha256:"+sha256File(t, p) {
		t.Errorf("rewritten file: source %q (was %q)", s2, s1)
	}
	// A FIFO is refused, not read.
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := FileSource(cache, fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("FileSource of a FIFO succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("FileSource hangs on a FIFO")
	}
	// A folder (an OCI layout) is hashed by its files.
	lay := t.TempDir()
	writeFile(t, filepath.Join(lay, "index.json"), "{}")
	d1, _ := FileSource(cache, lay)
	writeFile(t, filepath.Join(lay, "blobs/sha256/x"), "blob")
	d2, _ := FileSource(cache, lay)
	if d1 == d2 || !strings.HasPrefix(d1, "file "+lay+"@sha256:") {
		t.Errorf("folder sources %q, %q", d1, d2)
	}
}
