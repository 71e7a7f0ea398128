package integration

import (
	"archive/tar"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// helloImage builds a minimal image: /etc/passwd and /etc/group with root
// and agent (1000), and a static Go program at /bin/hello. It has no shell
// and no libc: what the guest agent needs of an image and nothing more.
func helloImage(t *testing.T) v1.Image {
	t.Helper()
	hello := staticProgram(t, `package main

import (
	"fmt"
	"os"
)

func main() {
	wd, _ := os.Getwd()
	fmt.Printf("hello from an image, uid %d, in %s\n", os.Getuid(), wd)
}
`)
	now := time.Now()
	return oneLayerImage(t, []layerEntry{
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now}},
		{hdr: tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: now},
			body: []byte("root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n")},
		{hdr: tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: now}, body: []byte("root:x:0:\nagent:x:1000:\n")},
		{hdr: tar.Header{Name: "home/agent/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Gid: 1000, ModTime: now}},
		{hdr: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now}},
		{hdr: tar.Header{Name: "bin/hello", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: now}, body: hello},
	}, nil)
}

type templateRow struct {
	Name      string   `json:"name"`
	ID        string   `json:"id"`
	Source    string   `json:"source"`
	Sandboxes []string `json:"sandboxes"`
}

func (h *harness) templates() map[string]templateRow {
	h.t.Helper()
	res := h.mustSbx("template", "ls", "--json")
	var rows []templateRow
	if err := json.Unmarshal([]byte(res.stdout), &rows); err != nil {
		h.t.Fatalf("template ls --json: %v\n%s", err, res.stdout)
	}
	out := map[string]templateRow{}
	for _, r := range rows {
		out[r.Name] = r
	}
	return out
}

// wantFail runs sbx, which must fail with one clear message on stderr
// that contains every want, and no Go stack trace.
func (h *harness) wantFail(wants []string, args ...string) {
	h.t.Helper()
	res := h.sbx(args...)
	if res.code == 0 {
		h.t.Fatalf("sbx %s succeeded, want a failure\nstdout: %s", strings.Join(args, " "), res.stdout)
	}
	for _, w := range wants {
		if !strings.Contains(res.stderr, w) {
			h.t.Errorf("sbx %s: stderr lacks %q:\n%s", strings.Join(args, " "), w, res.stderr)
		}
	}
	if strings.Contains(res.stderr, "goroutine ") || strings.Contains(res.stderr, "panic") {
		h.t.Errorf("sbx %s printed a stack trace:\n%s", strings.Join(args, " "), res.stderr)
	}
}

// TestImageTemplates: an image made by the test, given as a docker save
// tarball, becomes a template whose sandboxes boot and run its program;
// the same image pulled from a registry on 127.0.0.1 does too, and once
// the registry is gone the cached pull is used with a warning; a template
// in use cannot be removed.
func TestImageTemplates(t *testing.T) {
	h := newHarness(t)
	img := helloImage(t)
	tarPath := filepath.Join(t.TempDir(), "hello.tar")
	tag, _ := name.NewTag("test/hello:1")
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		t.Fatal(err)
	}
	res := h.mustSbx("template", "load", tarPath)
	if got := strings.TrimSpace(res.stdout); got != "test-hello-1" {
		t.Fatalf("template load printed %q, want test-hello-1\nstderr: %s", got, res.stderr)
	}
	if !strings.Contains(res.stderr, "no bash") {
		t.Errorf("load did not note the missing bash:\n%s", res.stderr)
	}
	if row := h.templates()["test-hello-1"]; !strings.HasPrefix(row.Source, "file "+tarPath+"@sha256:") {
		t.Errorf("loaded template source %q", row.Source)
	}

	ws := workspace(t)
	h.mustSbx("create", "-t", "test-hello-1", "--name", "t-img", ws)
	res = h.mustSbx("exec", "t-img", "/bin/hello")
	if want := "hello from an image, uid 1000"; !strings.Contains(res.stdout, want) {
		t.Errorf("exec /bin/hello: %q, want %q", res.stdout, want)
	}
	h.wantFail([]string{"template test-hello-1 is used by sandbox t-img", "sbx rm t-img"}, "template", "rm", "test-hello-1")
	h.mustSbx("rm", "-f", "t-img")
	h.mustSbx("template", "rm", "test-hello-1")
	if _, ok := h.templates()["test-hello-1"]; ok {
		t.Error("template rm left test-hello-1")
	}

	// The same image from a registry on loopback (the CLI is another
	// process, so the registry is served from this one).
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/img:1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	res = h.mustSbx("create", "-t", ref, "--name", "t-pull", workspace(t))
	pulled := ""
	for n, row := range h.templates() {
		if strings.HasPrefix(row.Source, "image "+ref+"@sha256:") {
			pulled = n
		}
	}
	if pulled == "" {
		t.Fatalf("no template records the pull of %s: %v\nstderr: %s", ref, h.templates(), res.stderr)
	}
	// Templates live in the shared cache: leave none behind.
	t.Cleanup(func() { h.sbx("rm", "-f", "--all"); h.sbx("template", "rm", pulled) })
	res = h.mustSbx("exec", "t-pull", "/bin/hello")
	if !strings.Contains(res.stdout, "hello from an image") {
		t.Errorf("exec /bin/hello in the pulled template: %q", res.stdout)
	}
	h.mustSbx("rm", "-f", "t-pull")

	srv.Close()
	res = h.mustSbx("create", "-t", ref, "--name", "t-cached", workspace(t))
	if !strings.Contains(res.stderr, "warning: cannot pull "+ref) || !strings.Contains(res.stderr, "using template "+pulled) {
		t.Errorf("fallback to the cached pull did not warn:\n%s", res.stderr)
	}
	if row := h.templates()[pulled]; !slices.Contains(row.Sandboxes, "t-cached") {
		t.Errorf("t-cached does not use the cached template %s: %+v", pulled, row)
	}
	h.mustSbx("rm", "-f", "t-cached")
	h.wantFail([]string{"cannot pull", "could not be reached", "sbx template load"},
		"create", "-t", strings.TrimPrefix(srv.URL, "http://")+"/test/never:1", "--name", "t-never", workspace(t))
}

// TestSaveTemplate: a file written in a shell sandbox outside the
// workspace is in the template saved from its disk, and in the same
// template written to a file and loaded back.
func TestSaveTemplate(t *testing.T) {
	h := newHarness(t)
	h.wantFail([]string{`no sandbox named "t-none"`}, "template", "save", "t-none", "x")
	h.mustSbx("create", "--name", "t-src", "shell", workspace(t))
	h.mustSbx("exec", "t-src", "sh", "-c", "echo saved-in-opt | sudo tee /opt/file >/dev/null && echo saved-in-home > /home/agent/homefile")
	h.wantFail([]string{"sandbox t-src is running", "sbx stop t-src"}, "template", "save", "t-src", "t-saved")
	h.mustSbx("stop", "t-src")

	res := h.mustSbx("template", "save", "t-src", "t-saved")
	t.Logf("save: %s", res.stderr)
	out := filepath.Join(t.TempDir(), "saved.sbx")
	h.mustSbx("template", "save", "t-src", "t-file", "-o", out)
	h.mustSbx("rm", "t-src")
	t.Cleanup(func() { h.sbx("rm", "-f", "--all"); h.sbx("template", "rm", "t-saved", "t-loaded") })
	if row, ok := h.templates()["t-saved"]; !ok || row.Source != "sandbox t-src (shell)" {
		t.Errorf("saved template: %+v (ok %v)", row, ok)
	}
	if _, ok := h.templates()["t-file"]; ok {
		t.Error("save -o also added a template")
	}

	res = h.mustSbx("run", "-t", "t-saved", "--name", "t-y", "shell", workspace(t), "--", "-c", "cat /opt/file /home/agent/homefile")
	if !strings.Contains(res.stdout, "saved-in-opt") || !strings.Contains(res.stdout, "saved-in-home") {
		t.Errorf("sandbox from the saved template: %q", res.stdout)
	}
	h.mustSbx("rm", "-f", "t-y")

	// A load does not silently replace a template that came from
	// elsewhere (the saved one here).
	h.wantFail([]string{"template t-saved exists and came from elsewhere", "--force"}, "template", "load", out, "--name", "t-saved")
	if row := h.templates()["t-saved"]; row.Source != "sandbox t-src (shell)" {
		t.Errorf("refused load changed t-saved: %+v", row)
	}
	if st, err := os.Stat(out); err != nil {
		t.Error(err)
	} else if st.Mode().Perm() != 0o600 {
		t.Errorf("save -o file mode %v, want 0600", st.Mode().Perm())
	}
	res = h.mustSbx("template", "load", out, "--name", "t-loaded")
	if got := strings.TrimSpace(res.stdout); got != "t-loaded" {
		t.Errorf("load printed %q", got)
	}
	res = h.mustSbx("run", "-t", "t-loaded", "--name", "t-z", "shell", workspace(t), "--", "-c", "cat /opt/file")
	if !strings.Contains(res.stdout, "saved-in-opt") {
		t.Errorf("sandbox from the loaded file: %q", res.stdout)
	}
}
