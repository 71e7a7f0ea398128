package integration

import (
	"archive/tar"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testToolSource is the one program of the test image: as /bin/echo it
// prints its arguments; as /bin/fetch it GETs a URL (through the proxy
// of its environment, or -direct) and prints the status or the error; as
// /bin/env it prints the named variables.
const testToolSource = `package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	args := os.Args[1:]
	switch filepath.Base(os.Args[0]) {
	case "fetch":
		// fetch [-direct] URL...: one line per URL; -direct skips the
		// proxy for the next URL.
		direct := false
		for _, a := range args {
			if a == "-direct" {
				direct = true
				continue
			}
			tr := &http.Transport{Proxy: http.ProxyFromEnvironment}
			if direct {
				tr.Proxy = nil
			}
			direct = false
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			resp, err := c.Get(a)
			if err != nil {
				fmt.Println("error:", err)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Println(resp.StatusCode, strings.Join(strings.Fields(string(b)), " "))
		}
	case "env":
		for _, k := range args {
			fmt.Printf("%s=%s\n", k, os.Getenv(k))
		}
	default:
		fmt.Println(strings.Join(args, " "))
	}
}
`

// testImage builds the test tool (static) and writes a one-layer image
// tagged ref holding it as /bin/echo, /bin/fetch and /bin/env to a docker
// save style tarball at path.
func testImage(t *testing.T, ref, path string) {
	t.Helper()
	data := staticProgram(t, testToolSource)
	mtime := time.Unix(0, 0)
	img := oneLayerImage(t, []layerEntry{
		{hdr: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}},
		{hdr: tar.Header{Name: "bin/echo", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: mtime}, body: data},
		{hdr: tar.Header{Name: "bin/fetch", Typeflag: tar.TypeLink, Linkname: "bin/echo", Mode: 0o755, ModTime: mtime}},
		{hdr: tar.Header{Name: "bin/env", Typeflag: tar.TypeLink, Linkname: "bin/echo", Mode: 0o755, ModTime: mtime}},
	}, func(cf *v1.ConfigFile) {
		cf.Config = v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"echo", "hello"}}
	})
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
}

// TestDocker: in a sandbox of the agents template, Docker Engine runs on
// its own disk; an image made here is loaded and runs; containers and
// builds get the proxy settings and the proxy CA; the engine keeps its
// images across a restart of the sandbox; and nothing in the guest or a
// container reaches a (fake) Docker API on the host's own address.
func TestDocker(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	const ref = "sbx-test/tool:1"
	imgTar := filepath.Join(t.TempDir(), "tool.tar")
	testImage(t, ref, imgTar)

	// An upstream the policy allows, reached by containers through the
	// proxy.
	web := &counter{}
	webSrv := httptest.NewServer(web)
	defer webSrv.Close()
	webPort := webSrv.Listener.Addr().(*net.TCPAddr).Port
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 allowed.test images.test unlisted.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.env = append(h.env, "SBX_HOSTS_FILE="+hosts)

	// A registry on loopback over TLS (a test CA), as images.test: the
	// policy allows it; unlisted.test, the same server, it does not. The
	// proxy tunnels its TLS, so dockerd in the guest is given the CA (in
	// /etc/docker/certs.d) and the host's proxy needs none. The test
	// pushes over plain HTTP to the same in-memory registry.
	var regHosts sync.Map // Host header -> true
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	regHandler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		regHosts.Store(strings.Split(r.Host, ":")[0], true)
		reg.ServeHTTP(w, r)
	})
	regCA, regLeaf := tlsCert(t, "images.test", "unlisted.test")
	regSrv := httptest.NewUnstartedServer(regHandler)
	regSrv.TLS = &tls.Config{Certificates: []tls.Certificate{regLeaf}}
	regSrv.StartTLS()
	defer regSrv.Close()
	regPort := regSrv.Listener.Addr().(*net.TCPAddr).Port
	pushSrv := httptest.NewServer(reg)
	defer pushSrv.Close()
	img, err := tarball.ImageFromPath(imgTar, nil)
	if err != nil {
		t.Fatal(err)
	}
	pushRef, err := name.ParseReference(strings.TrimPrefix(pushSrv.URL, "http://")+"/sbx-test/pulled:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(pushRef, img); err != nil {
		t.Fatalf("push to the test registry: %v", err)
	}
	digest, _ := img.Digest()
	regCAFile := filepath.Join(t.TempDir(), "registry-ca.pem")
	if err := os.WriteFile(regCAFile, regCA, 0o644); err != nil {
		t.Fatal(err)
	}

	// A fake Docker API on the host's own address: any connection counts.
	ip := hostAddr(t)
	var apiConns atomic.Int64
	api := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `{"Version":"fake-host-docker"}`)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				apiConns.Add(1)
			}
		},
	}
	apiLn, err := net.Listen("tcp", ip+":2375")
	if err != nil {
		t.Fatalf("listen on %s:2375 for the fake Docker API: %v", ip, err)
	}
	go api.Serve(apiLn)
	defer api.Close()

	h.mustSbx("policy", "init", "balanced")
	h.mustSbx("policy", "allow", "network", fmt.Sprintf("allowed.test:%d", webPort))
	h.mustSbx("policy", "allow", "network", fmt.Sprintf("images.test:%d", regPort))
	start := time.Now()
	name := strings.TrimSpace(h.mustSbx("create", "-t", "agents", "--name", "t-docker", ws).stdout)
	t.Logf("create -t agents (template build on first use included): %s", time.Since(start).Round(time.Millisecond))
	sh := func(script string) result {
		t.Helper()
		return h.sbx("exec", name, "bash", "-c", script)
	}
	mustSh := func(script string) string {
		t.Helper()
		r := sh(script)
		if r.code != 0 {
			h.dumpLogs()
			if l := sh("sudo tail -n 30 /var/log/dockerd.log"); l.code == 0 {
				t.Logf("dockerd.log:\n%s", l.stdout)
			}
			t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", script, r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}

	// Right after create, docker works (the wrapper waits for dockerd).
	t0 := time.Now()
	mustSh("docker version --format '{{.Server.Version}}'")
	t.Logf("dockerd answered %s after create returned", time.Since(t0).Round(time.Millisecond))
	if out := mustSh("findmnt -n -o SOURCE,FSTYPE /var/lib/docker"); !strings.Contains(out, "ext4") {
		t.Errorf("/var/lib/docker is not the ext4 docker disk: %q", out)
	}

	h.mustSbx("cp", imgTar, name+":/tmp/tool.tar")
	if out := mustSh("docker load -i /tmp/tool.tar"); !strings.Contains(out, ref) {
		t.Errorf("docker load: %q does not name %s", out, ref)
	}
	if out := mustSh("docker run --rm " + ref + " echo ok"); strings.TrimSpace(out) != "ok" {
		t.Errorf("docker run --rm %s echo ok printed %q", ref, out)
	}

	// Containers get the proxy settings from ~/.docker/config.json: a name
	// mapped to loopback is reachable only through the proxy, which allows
	// it. In the same container (each start costs seconds under TCG), the
	// fake host Docker API, directly and through the proxy.
	out := mustSh(fmt.Sprintf("docker run --rm %s fetch http://allowed.test:%d/from-container -direct http://%s:2375/version http://%s:2375/version", ref, webPort, ip, ip))
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "200 hello from allowed.test") || !strings.HasPrefix(lines[2], "403 ") {
		t.Errorf("container requests: want 200 from allowed.test through the proxy, an error, a 403; got %q", out)
	}
	// Builds get the proxy CA as a build argument without being asked.
	mustSh(`mkdir -p /tmp/ctx && printf 'FROM ` + ref + `\nARG PROXY_CA_CERT_B64\nENV CA_FROM_BUILD=$PROXY_CA_CERT_B64\n' > /tmp/ctx/Dockerfile && docker build -q -t sbx-test/built /tmp/ctx`)
	if out := mustSh(`docker image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' sbx-test/built | grep -qx "CA_FROM_BUILD=$PROXY_CA_CERT_B64" && [ -n "$PROXY_CA_CERT_B64" ] && echo same`); !strings.Contains(out, "same") {
		t.Errorf("the build did not get $PROXY_CA_CERT_B64: %q", out)
	}

	// docker pull from the allowed registry, through the proxy; the same
	// registry under a name the policy does not allow is refused.
	h.mustSbx("cp", regCAFile, name+":/tmp/registry-ca.pem")
	for _, n := range []string{"images.test", "unlisted.test"} {
		mustSh(fmt.Sprintf("sudo mkdir -p /etc/docker/certs.d/%s:%d && sudo cp /tmp/registry-ca.pem /etc/docker/certs.d/%s:%d/ca.crt", n, regPort, n, regPort))
	}
	pulled := fmt.Sprintf("images.test:%d/sbx-test/pulled:1", regPort)
	mustSh("docker pull -q " + pulled)
	if out := mustSh("docker image inspect --format '{{join .RepoDigests \" \"}}' " + pulled); !strings.Contains(out, digest.String()) {
		t.Errorf("pulled image digests %q, want %s", out, digest)
	}
	if r := sh(fmt.Sprintf("docker pull -q unlisted.test:%d/sbx-test/pulled:1", regPort)); r.code == 0 {
		t.Errorf("docker pull from a name the policy does not allow succeeded: %s", r.stdout)
	} else {
		t.Logf("pull from a name not allowed: %s", strings.TrimSpace(r.stderr))
	}
	if _, ok := regHosts.Load("images.test"); !ok {
		t.Error("the registry saw no request for images.test")
	}
	if _, ok := regHosts.Load("unlisted.test"); ok {
		t.Error("a request for unlisted.test reached the registry")
	}

	// No path to a Docker daemon on the host from the guest, directly or
	// through the proxy.
	for _, script := range []string{
		fmt.Sprintf("curl -sS -m 5 --noproxy '*' http://%s:2375/version", ip),
		fmt.Sprintf("curl -sS -m 5 http://%s:2375/version", ip),
		fmt.Sprintf("DOCKER_HOST=tcp://%s:2375 timeout 15 /usr/bin/docker version", ip),
	} {
		r := sh(script)
		t.Logf("escape attempt %q: exit %d %s", script, r.code, strings.TrimSpace(r.stderr+r.stdout))
		if strings.Contains(r.stdout, "fake-host-docker") {
			t.Errorf("%q reached the host's Docker API", script)
		}
	}
	if strings.Contains(out, "fake-host-docker") {
		t.Error("a container reached the host's Docker API")
	}
	if n := apiConns.Load(); n != 0 {
		t.Errorf("the fake Docker API on the host's address got %d connections", n)
	}

	// The engine's data is on the sandbox's own disk and survives a
	// restart.
	h.mustSbx("stop", name)
	if out := mustSh("docker image ls --format '{{.Repository}}:{{.Tag}}'"); !strings.Contains(out, ref) {
		t.Errorf("after a restart, images are %q; want %s", out, ref)
	}
}
