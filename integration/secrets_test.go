package integration

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestCredentials: with secrets set on the host, curl in the guest sends
// the sentinel and the fake API on loopback (reached through the test
// mapping of the real API names) receives the real value; git-style
// requests to github get basic auth added. The real values are then looked
// for in the guest's environment and files, the sandbox's state folder and
// every log and audit file, and found nowhere but the secret store.
func TestCredentials(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	const anthropicKey = "sk-ant-api03-REALVALUE-e2e-7f3a9c1b5d"
	const githubToken = "ghp_REALTOKENe2e0123456789abcdefABCDEF"
	basic := base64.StdEncoding.EncodeToString([]byte("x-access-token:" + githubToken))

	var mu sync.Mutex
	got := map[string]string{}
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[r.Host+" x-api-key"] = r.Header.Get("X-Api-Key")
		got[r.Host+" authorization"] = r.Header.Get("Authorization")
		mu.Unlock()
		if r.URL.Path == "/echo" {
			// A debug endpoint that hands back what arrived: the proxy
			// must put the placeholder back before the guest sees it.
			w.Header().Set("X-Echo-Key", r.Header.Get("X-Api-Key"))
			r.Header.Write(w)
			return
		}
		fmt.Fprintln(w, "fake api ok")
	})
	caPEM, leaf := tlsCert(t, "api.anthropic.com", "github.com")
	srv := httptest.NewUnstartedServer(api)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	srv.StartTLS()
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 api.anthropic.com github.com\n"), 0o644)
	caFile := filepath.Join(dir, "upstream-ca.pem")
	os.WriteFile(caFile, caPEM, 0o644)
	// The proxy verifies upstream TLS against the host's roots, which
	// SSL_CERT_FILE replaces here with the fake API's CA.
	h.env = append(h.env, "SBX_HOSTS_FILE="+hosts, "SSL_CERT_FILE="+caFile)

	h.mustSbx("policy", "init", "balanced")
	// The fake APIs listen on a test port, not 443: a rule naming that
	// port lets the mapped names reach it and the credentials go there.
	h.mustSbx("policy", "allow", "network", fmt.Sprintf("api.anthropic.com:%d,github.com:%d", port, port))
	if res := h.sbxIn(anthropicKey+"\n", "secret", "set", "anthropic"); res.code != 0 {
		t.Fatalf("secret set: %+v", res)
	}
	if res := h.sbxIn(githubToken+"\n", "secret", "set", "github"); res.code != 0 {
		t.Fatalf("secret set: %+v", res)
	}
	if ls := h.mustSbx("secret", "ls").stdout; strings.Contains(ls, anthropicKey) || !strings.Contains(ls, "anthropic") {
		t.Errorf("secret ls: %q", ls)
	}
	name := strings.TrimSpace(h.mustSbx("create", "--name", "t-cred", ws).stdout)

	res := h.sbx("exec", name, "bash", "-c", fmt.Sprintf(
		`echo "env=$ANTHROPIC_API_KEY"; curl -sS -m 20 https://api.anthropic.com:%d/v1/messages -H "x-api-key: $ANTHROPIC_API_KEY" -d '{}'`, port))
	if res.code != 0 || !strings.Contains(res.stdout, "env=proxy-managed") || !strings.Contains(res.stdout, "fake api ok") {
		h.dumpLogs()
		t.Fatalf("anthropic call: %+v", res)
	}
	res = h.sbx("exec", name, "bash", "-c", fmt.Sprintf(
		`curl -sS -i -m 20 https://api.anthropic.com:%d/echo -H "x-api-key: $ANTHROPIC_API_KEY"; curl -sS -i -m 20 --compressed https://github.com:%d/echo`, port, port))
	if res.code != 0 || strings.Contains(res.stdout, anthropicKey) || strings.Contains(res.stdout, githubToken) || strings.Contains(res.stdout, basic) ||
		!strings.Contains(res.stdout, "proxy-managed") {
		t.Errorf("echo endpoint: the guest got a real value back, or no sentinel where it was (exit %d)", res.code)
	}
	res = h.sbx("exec", name, "bash", "-c", fmt.Sprintf(
		`curl -sS -m 20 "https://github.com:%d/owner/repo.git/info/refs?service=git-upload-pack"`, port))
	if !strings.Contains(res.stdout, "fake api ok") {
		t.Fatalf("git-style call: %+v", res)
	}
	mu.Lock()
	if v := got[fmt.Sprintf("api.anthropic.com:%d x-api-key", port)]; v != anthropicKey {
		t.Errorf("the fake API received x-api-key %q, want the real key", v)
	}
	if v := got[fmt.Sprintf("github.com:%d authorization", port)]; v != "Basic "+basic {
		t.Errorf("github received Authorization %q, want basic auth with the token", v)
	}
	mu.Unlock()

	// Nowhere in the guest: environment, and every file (the workspace too).
	// The values travel to the guest's grep only base64-encoded, through a
	// pipe, so the search itself puts no literal value into the guest's
	// arguments, logs or disk (the list sits on /dev/shm, a tmpfs). -D skip:
	// never block on a FIFO or socket.
	needles := []string{anthropicKey, githubToken, basic}
	enc := base64.StdEncoding.EncodeToString([]byte(strings.Join(needles, "\n") + "\n"))
	r := h.sbx("exec", "-u", "root", name, "bash", "-c",
		"pats=$(mktemp -p /dev/shm); echo "+enc+" | base64 -d > $pats; env | grep -F -f $pats; grep -rlsF -D skip -f $pats / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev | grep -vx \"$pats\"; rm -f $pats; true")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "" {
		t.Errorf("secret found in the guest (exit %d): %s", r.code, r.stdout)
	}
	h.mustSbx("stop", name)

	// Nowhere on the host side but the store: state folder (disk image,
	// logs, audit), and the rest of SBX_HOME.
	store := filepath.Join(h.home, "config", "secrets")
	filepath.WalkDir(h.home, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if strings.HasPrefix(path, store+string(filepath.Separator)) {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, n := range needles {
			if bytes.Contains(data, []byte(n)) {
				t.Errorf("secret found in %s", path)
			}
		}
		return nil
	})
	storeHas := false
	filepath.WalkDir(store, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if data, _ := os.ReadFile(path); bytes.Contains(data, []byte(anthropicKey)) {
				storeHas = true
			}
		}
		return nil
	})
	if !storeHas {
		t.Errorf("the secret store under %s does not hold the secret (test looked in the wrong place?)", store)
	}
}
