package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The guest and the host run the same bash scripts; each script times
// itself with `date +%s%N` and prints the nanoseconds, so neither side
// counts the cost of starting it (sbx exec, or bash on the host).

// guestScript runs script with bash in the sandbox and returns its stdout.
func guestScript(b *testing.B, h *harness, name, script string) string {
	b.Helper()
	return h.mustSbx("exec", name, "bash", "-c", script).stdout
}

// hostScript runs script with bash on the host and returns its stdout.
func hostScript(b *testing.B, script string) string {
	b.Helper()
	out, err := exec.Command("bash", "-c", script).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		b.Fatalf("host script: %v\n%s\n%s", err, script, stderr)
	}
	return string(out)
}

// nanos parses the whitespace-separated integers a script printed last.
func nanos(b *testing.B, out string) []time.Duration {
	b.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var ds []time.Duration
	for _, f := range strings.Fields(lines[len(lines)-1]) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("script output %q: %v", out, err)
		}
		ds = append(ds, time.Duration(n))
	}
	return ds
}

func sum(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t
}

// selfSignedCert is a self-signed certificate for name that curl can trust
// with --cacert, and its PEM.
func selfSignedCert(b *testing.B, name string) (tls.Certificate, []byte) {
	b.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// httpsRequests is how many sequential GETs each side makes.
const httpsRequests = 20

// BenchmarkProxiedHTTPS: N sequential HTTPS GETs with curl inside the
// guest, through the sandbox's proxy (a CONNECT tunnel, policy check,
// netstack) to a TLS server on the host's loopback, named bench.test
// through SBX_HOSTS_FILE; against the same N GETs with curl on the host
// straight to the server. Each GET is a new curl process, connection and
// TLS handshake. A second figure is curl's own time_total per request,
// which leaves out starting curl (slow under TCG emulation).
func BenchmarkProxiedHTTPS(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	const domain = "bench.test"
	cert, caPEM := selfSignedCert(b, domain)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	dir := b.TempDir()
	hosts := filepath.Join(dir, "hosts")
	caFile := filepath.Join(dir, "bench-ca.pem")
	os.WriteFile(hosts, []byte("127.0.0.1 "+domain+"\n"), 0o644)
	os.WriteFile(caFile, caPEM, 0o644)
	h.env = append(h.env, "SBX_HOSTS_FILE="+hosts)
	h.mustSbx("policy", "allow", "network", fmt.Sprintf("%s:%d", domain, port))
	name := strings.TrimSpace(h.mustSbx("create", "--name", "https", ws).stdout)
	h.mustSbx("cp", caFile, name+":/tmp/bench-ca.pem")
	readBoot(b, h)

	url := fmt.Sprintf("https://%s:%d/", domain, port)
	// One GET untimed (loads curl and its libraries), then N timed ones;
	// prints each request's time_total (s), then the wall time (ns).
	script := func(curl string) string {
		return fmt.Sprintf(`set -e; t=$(mktemp); %[1]s >/dev/null
s=$(date +%%s%%N); for i in $(seq %[2]d); do %[1]s -w '%%{time_total}\n' >>"$t"; done; e=$(date +%%s%%N)
tr '\n' ' ' <"$t"; echo; rm -f "$t"; echo $((e-s))`, curl, httpsRequests)
	}
	guestCurl := fmt.Sprintf("curl -sS -o /dev/null -m 30 --cacert /tmp/bench-ca.pem %s", url)
	hostCurl := fmt.Sprintf("curl -sS -o /dev/null -m 30 --noproxy '*' --resolve %s:%d:127.0.0.1 --cacert %s %s", domain, port, caFile, url)
	guestOut := guestScript(b, h, name, script(guestCurl))
	hostOut := hostScript(b, script(hostCurl))
	phases := ` -w 'connect %{time_connect} s, TLS done %{time_appconnect} s, first byte %{time_starttransfer} s, total %{time_total} s'`
	b.Logf("one GET in the guest: %s", guestScript(b, h, name, guestCurl+phases))
	b.Logf("one GET on the host: %s", hostScript(b, hostCurl+phases))
	if log := h.mustSbx("policy", "log", name).stdout; !strings.Contains(log, domain) {
		b.Fatalf("the guest's requests are not in the policy log (did they bypass the proxy?):\n%s", log)
	}
	perReq := func(out string) float64 { return ms(nanos(b, out)[0]) / httpsRequests }
	report(b, benchResult{
		Name: fmt.Sprintf("proxied HTTPS GET, guest curl (%d sequential, per request)", httpsRequests), Unit: "ms", Value: perReq(guestOut),
		Baseline: "host curl straight to the server", BaseVal: perReq(hostOut),
	})
	curlTotal := func(out string) float64 {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		var ds []time.Duration
		for _, f := range strings.Fields(lines[0]) {
			s, err := strconv.ParseFloat(f, 64)
			if err != nil {
				b.Fatalf("time_total %q: %v", f, err)
			}
			ds = append(ds, time.Duration(s*float64(time.Second)))
		}
		return ms(median(ds))
	}
	report(b, benchResult{
		Name: "proxied HTTPS GET, curl time_total (median)", Unit: "ms", Value: curlTotal(guestOut),
		Baseline: "host curl time_total", BaseVal: curlTotal(hostOut),
	})
}

// BenchmarkWorkspaceIO: file work in the workspace (a 9p share) from the
// guest against the same work by the host on the same folder: (a) create
// 1,000 small files and stat them, (b) write 100 MiB with fsync then read
// it back with the file's page cache dropped on the host (and all caches
// dropped in the guest), (c) `git status` in a repository of 10,000 files
// made on the host (the guest's git against the host's).
func BenchmarkWorkspaceIO(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	name := strings.TrimSpace(h.mustSbx("create", "--name", "io", ws).stdout)
	readBoot(b, h)

	// (a) 1,000 small files: create, then stat each.
	small := func(dir string) string {
		return fmt.Sprintf(`set -e; mkdir -p %[1]q; cd %[1]q
s=$(date +%%s%%N); for i in $(seq 1000); do echo "file $i" > f$i; done; m=$(date +%%s%%N)
stat -c %%s f* >/dev/null; e=$(date +%%s%%N); echo $((m-s)) $((e-m))`, dir)
	}
	g := nanos(b, guestScript(b, h, name, small(filepath.Join(ws, "small-guest"))))
	hs := nanos(b, hostScript(b, small(filepath.Join(ws, "small-host"))))
	b.Logf("1,000 small files: guest create %v stat %v; host create %v stat %v", g[0], g[1], hs[0], hs[1])
	report(b, benchResult{
		Name: "workspace: create + stat 1,000 small files", Unit: "ms", Value: ms(sum(g)),
		Baseline: "the same on the host", BaseVal: ms(sum(hs)),
	})

	// (b) 100 MiB: write with fsync, drop the file's cache, read.
	write := func(file string) string {
		return fmt.Sprintf(`set -e; s=$(date +%%s%%N); dd if=/dev/zero of=%q bs=1M count=100 conv=fsync status=none; e=$(date +%%s%%N); echo $((e-s))`, file)
	}
	read := func(file string, dropGuest bool) string {
		drop := ""
		if dropGuest {
			drop = "sync; echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null; "
		}
		return fmt.Sprintf(`set -e; %ss=$(date +%%s%%N); dd if=%q of=/dev/null bs=1M status=none; e=$(date +%%s%%N); echo $((e-s))`, drop, file)
	}
	dropHost := func(file string) { hostScript(b, fmt.Sprintf("dd if=%q iflag=nocache count=0 status=none", file)) }
	gf, hf := filepath.Join(ws, "big-guest"), filepath.Join(ws, "big-host")
	gw := nanos(b, guestScript(b, h, name, write(gf)))[0]
	dropHost(gf)
	gr := nanos(b, guestScript(b, h, name, read(gf, true)))[0]
	hw := nanos(b, hostScript(b, write(hf)))[0]
	dropHost(hf)
	hr := nanos(b, hostScript(b, read(hf, false)))[0]
	mibps := func(d time.Duration) float64 { return 100 / d.Seconds() }
	b.Logf("100 MiB: guest write %v (%.0f MiB/s) read %v (%.0f MiB/s); host write %v (%.0f MiB/s) read %v (%.0f MiB/s)",
		gw, mibps(gw), gr, mibps(gr), hw, mibps(hw), hr, mibps(hr))
	os.Remove(gf)
	os.Remove(hf)
	report(b, benchResult{
		Name: "workspace: write (fsync) + read 100 MiB", Unit: "ms", Value: ms(gw + gr),
		Baseline: "the same on the host", BaseVal: ms(hw + hr),
	})

	// (c) git status in a repository of 10,000 files, made on the host.
	repo := filepath.Join(ws, "repo")
	makeRepo(b, repo, 100, 100)
	status := fmt.Sprintf(`set -e; cd %q; g() { git -c safe.directory='*' status --porcelain >/dev/null; }; g
for i in 1 2 3; do s=$(date +%%s%%N); g; e=$(date +%%s%%N); echo -n "$((e-s)) "; done; echo`, repo)
	hg := nanos(b, hostScript(b, status))
	gg := nanos(b, guestScript(b, h, name, status))
	b.Logf("git status, 10,000 files: guest %v; host %v", gg, hg)
	report(b, benchResult{
		Name: "workspace: git status, 10,000 files", Unit: "ms", Value: ms(median(gg)),
		Baseline: "host git on the host", BaseVal: ms(median(hg)),
	})
}

// makeRepo makes a git repository at dir with dirs folders of files small
// files each, all committed, owned (as the workspace is) by the guest
// user's uid.
func makeRepo(b *testing.B, dir string, dirs, files int) {
	b.Helper()
	for d := 0; d < dirs; d++ {
		sub := filepath.Join(dir, fmt.Sprintf("pkg%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := 0; f < files; f++ {
			body := fmt.Sprintf("package pkg%03d\n\n// File %d.\nconst N%d = %d\n", d, f, f, d*files+f)
			if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d.go", f)), []byte(body), 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	hostScript(b, fmt.Sprintf(`set -e; cd %q; git init -q; git add -A
git -c user.name=bench -c user.email=bench@example.invalid commit -qm init`, dir))
	if os.Getuid() == 0 {
		uid := wantUID()
		hostScript(b, fmt.Sprintf("chown -R %d:%d %q", uid, uid, dir))
	}
}
