package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hostAddr is this machine's first non-loopback IPv4 address: escape
// targets listen there, so a packet that leaks lands where the test sees it.
func hostAddr(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	t.Fatal("no non-loopback IPv4 address on this host for the escape targets")
	return ""
}

// tlsCert makes a CA and a leaf for names, returning the CA PEM and the
// leaf as a tls.Certificate.
func tlsCert(t *testing.T, names ...string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sbx test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

// counter is a server that counts what reaches it.
type counter struct{ hits atomic.Int64 }

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	fmt.Fprintf(w, "hello from %s", r.Host)
}

// TestNetworkPolicy: under deny-all with one allow rule, the guest reaches
// an allowed test domain (mapped to a loopback server through
// SBX_HOSTS_FILE) over HTTP and HTTPS, gets an explained 403 for a denied
// one, cannot reach servers on the host's own address by any path, and a
// rule added while it runs works at once. The decisions show in the log.
func TestNetworkPolicy(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)

	// Upstreams on loopback, reached through test names.
	web := &counter{}
	webSrv := httptest.NewServer(web)
	defer webSrv.Close()
	caPEM, leaf := tlsCert(t, "allowed.test")
	tlsSrv := httptest.NewUnstartedServer(web)
	tlsSrv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	webPort := webSrv.Listener.Addr().(*net.TCPAddr).Port
	tlsPort := tlsSrv.Listener.Addr().(*net.TCPAddr).Port

	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 allowed.test denied.test later.test portless.test\n"), 0o644)
	h.env = append(h.env, "SBX_HOSTS_FILE="+hosts)

	// Escape targets on the host's own address: each counts what arrives.
	ip := hostAddr(t)
	escHTTP := &counter{}
	escLn, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	escSrv := &http.Server{Handler: escHTTP}
	go escSrv.Serve(escLn)
	defer escSrv.Close()
	escPort := escLn.Addr().(*net.TCPAddr).Port
	var rawHits atomic.Int64
	dockerLn, err := net.Listen("tcp", ip+":2375")
	if err != nil {
		dockerLn, err = net.Listen("tcp", ip+":0") // 2375 taken: any port shows the same thing
		if err != nil {
			t.Fatal(err)
		}
	}
	defer dockerLn.Close()
	go func() {
		for {
			c, err := dockerLn.Accept()
			if err != nil {
				return
			}
			rawHits.Add(1)
			c.Close()
		}
	}()
	dockerPort := dockerLn.Addr().(*net.TCPAddr).Port
	udp, err := net.ListenPacket("udp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	var udpHits atomic.Int64
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return
			}
			udpHits.Add(1)
		}
	}()
	udpPort := udp.LocalAddr().(*net.UDPAddr).Port
	// An escape target on the host's loopback: a service (a Docker daemon,
	// another sandbox's published port) a mapped name must not open.
	loopHTTP := &counter{}
	loopLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	loopSrv := &http.Server{Handler: loopHTTP}
	go loopSrv.Serve(loopLn)
	defer loopSrv.Close()
	loopPort := loopLn.Addr().(*net.TCPAddr).Port

	h.mustSbx("policy", "init", "deny-all")
	// A name mapped to loopback is reached on the ports its rules name; a
	// portless rule (portless.test) opens only 80 and 443 of it.
	h.mustSbx("policy", "allow", "network", fmt.Sprintf("allowed.test:%d,allowed.test:%d", webPort, tlsPort))
	h.mustSbx("policy", "allow", "network", "portless.test")
	name := strings.TrimSpace(h.mustSbx("create", "--name", "t-net", ws).stdout)
	caFile := filepath.Join(t.TempDir(), "test-ca.pem")
	os.WriteFile(caFile, caPEM, 0o644)
	h.mustSbx("cp", caFile, name+":/tmp/test-ca.pem")

	sh := func(script string) result {
		t.Helper()
		return h.sbx("exec", name, "bash", "-c", script)
	}
	if res := sh(fmt.Sprintf("curl -sS -m 20 http://allowed.test:%d/a", webPort)); res.code != 0 || !strings.Contains(res.stdout, "hello from allowed.test") {
		h.dumpLogs()
		t.Fatalf("http to an allowed domain: %+v", res)
	}
	if res := sh(fmt.Sprintf("curl -sS -m 20 --cacert /tmp/test-ca.pem https://allowed.test:%d/b", tlsPort)); res.code != 0 || !strings.Contains(res.stdout, "hello from allowed.test") {
		t.Errorf("https (tunnelled) to an allowed domain: %+v", res)
	}
	res := sh(fmt.Sprintf("curl -sS -m 20 http://denied.test:%d/c", webPort))
	if !strings.Contains(res.stdout, "denied.test") || !strings.Contains(res.stdout, "sbx policy allow network denied.test") {
		t.Errorf("denied domain: want a 403 that names the host and the command, got %+v", res)
	}
	before := web.hits.Load()

	// Escapes: nothing may arrive at the host's own address.
	for _, script := range []string{
		fmt.Sprintf("curl -sS -m 5 --noproxy '*' http://%s:%d/", ip, escPort),
		fmt.Sprintf("curl -sS -m 5 http://%s:%d/", ip, escPort),
		fmt.Sprintf("timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%d' ", ip, dockerPort),
		fmt.Sprintf("curl -sS -m 5 --noproxy '*' http://%s:%d/version", ip, dockerPort),
		fmt.Sprintf("for i in 1 2 3; do echo leak > /dev/udp/%s/%d; done; sleep 1", ip, udpPort),
		fmt.Sprintf("curl -sS -m 5 --noproxy '*' http://host.sbx.internal:%d/", webPort),
		fmt.Sprintf("curl -sS -m 5 --noproxy '*' http://127.0.0.1:%d/", webPort),
		fmt.Sprintf("curl -sS -m 5 http://portless.test:%d/", loopPort),
		fmt.Sprintf("curl -sS -m 5 -p http://portless.test:%d/", loopPort),
		fmt.Sprintf("curl -sS -m 5 --noproxy '*' http://portless.test:%d/", loopPort),
		fmt.Sprintf("timeout 5 bash -c 'exec 3<>/dev/tcp/portless.test/%d; echo GET / >&3' ", loopPort),
		fmt.Sprintf("curl -sS -m 5 http://allowed.test:%d/", loopPort),
	} {
		r := sh(script)
		t.Logf("escape attempt %q: exit %d %s", script, r.code, strings.TrimSpace(r.stderr+r.stdout))
	}
	// ICMP: the host kernel's own echo-request counter must not move.
	echosBefore := hostInEchos(t)
	if r := sh(fmt.Sprintf("sudo ping -c 3 -W 1 %s", ip)); r.code == 0 {
		t.Errorf("ping to the host's address got a reply: %s", r.stdout)
	}
	if r := sh("sudo ping -c 2 -W 1 192.0.2.1"); r.code == 0 {
		t.Errorf("ping to an outside address got a reply (the netstack answered?): %s", r.stdout)
	}
	time.Sleep(time.Second)
	if after := hostInEchos(t); after != echosBefore {
		t.Errorf("the host received %d ICMP echo requests while the guest pinged it", after-echosBefore)
	}
	if n := escHTTP.hits.Load(); n != 0 {
		t.Errorf("HTTP escape target on the host's address got %d requests", n)
	}
	if n := rawHits.Load(); n != 0 {
		t.Errorf("raw TCP escape target got %d connections", n)
	}
	if n := udpHits.Load(); n != 0 {
		t.Errorf("UDP escape target got %d datagrams", n)
	}
	if n := loopHTTP.hits.Load(); n != 0 {
		t.Errorf("loopback escape target reached through a mapped name on a port no rule names (%d requests)", n)
	}
	if n := web.hits.Load(); n != before {
		t.Errorf("loopback server reached through host.sbx.internal or 127.0.0.1 without a rule (%d requests)", n-before)
	}

	// A rule added while the sandbox runs works at once.
	h.mustSbx("policy", "allow", "network", fmt.Sprintf("later.test:%d", webPort))
	time.Sleep(time.Second)
	if res := sh(fmt.Sprintf("curl -sS -m 20 http://later.test:%d/d", webPort)); !strings.Contains(res.stdout, "hello from later.test") {
		t.Errorf("rule added while running: %+v", res)
	}

	// host.sbx.internal reaches the host's loopback once localhost:PORT is
	// allowed, directly and through the proxy.
	h.mustSbx("policy", "allow", "network", fmt.Sprintf("localhost:%d", webPort))
	time.Sleep(time.Second)
	for _, flags := range []string{"--noproxy '*'", ""} {
		if res := sh(fmt.Sprintf("curl -sS -m 20 %s http://host.sbx.internal:%d/e", flags, webPort)); !strings.Contains(res.stdout, "hello from host.sbx.internal") {
			t.Errorf("host.sbx.internal with localhost:%d allowed (curl %s): %+v", webPort, flags, res)
		}
	}

	// The audit log is flushed within a fraction of a second.
	deadline := time.Now().Add(5 * time.Second)
	for {
		log := h.mustSbx("policy", "log", name).stdout
		missing := ""
		for _, want := range []string{"allowed.test", "denied.test", "later.test", ip + ":" + fmt.Sprint(udpPort), ip + ":" + fmt.Sprint(dockerPort), "host.sbx.internal"} {
			if !strings.Contains(log, want) {
				missing = want
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("policy log lacks %s:\n%s", missing, log)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// guestServer is a tiny HTTP server for the guest (perl-base is in every
// Debian root), answering "from-guest".
const guestServer = `perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalPort=>8000,Listen=>5,ReuseAddr=>1) or die; while($c=$s->accept){print $c "HTTP/1.0 200 OK\r\n\r\nfrom-guest\n"; close $c}'`

// TestPorts: a published port answers from the host; another sandbox
// cannot reach it through host.sbx.internal or the host's address.
func TestPorts(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	ip := hostAddr(t)
	h.mustSbx("policy", "init", "balanced")
	a := strings.TrimSpace(h.mustSbx("create", "--name", "t-pa", "--publish", "8000", ws).stdout)
	var ports []struct {
		HostIP      string `json:"hostIP"`
		HostPort    int    `json:"hostPort"`
		SandboxPort int    `json:"sandboxPort"`
	}
	if err := json.Unmarshal([]byte(h.mustSbx("ports", a, "--json").stdout), &ports); err != nil || len(ports) != 1 || ports[0].HostPort == 0 || ports[0].HostIP != "127.0.0.1" {
		t.Fatalf("ports --json: %+v %v", ports, err)
	}
	hostPort := ports[0].HostPort
	// Also publish on the host's own address, the other way in.
	h.mustSbx("ports", a, "--publish", fmt.Sprintf("%s:0:8000", ip))
	h.mustSbx("exec", "-d", a, "sh", "-c", guestServer)
	url := fmt.Sprintf("http://127.0.0.1:%d/", hostPort)
	var body string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		resp, err := http.Get(url)
		if err == nil {
			b := make([]byte, 64)
			n, _ := resp.Body.Read(b)
			resp.Body.Close()
			body = string(b[:n])
			if strings.Contains(body, "from-guest") {
				break
			}
		}
	}
	if !strings.Contains(body, "from-guest") {
		h.dumpLogs()
		t.Fatalf("published port %s did not answer from the guest (%q)", url, body)
	}
	if err := json.Unmarshal([]byte(h.mustSbx("ports", a, "--json").stdout), &ports); err != nil || len(ports) != 2 {
		t.Fatalf("ports after a second publish: %+v", ports)
	}
	ipPort := 0
	for _, p := range ports {
		if p.HostIP == ip {
			ipPort = p.HostPort
		}
	}

	wsB := workspace(t)
	b := strings.TrimSpace(h.mustSbx("create", "--name", "t-pb", wsB).stdout)
	for _, target := range []string{
		fmt.Sprintf("http://host.sbx.internal:%d/", hostPort),
		fmt.Sprintf("http://%s:%d/", ip, ipPort),
	} {
		for _, flags := range []string{"", "--noproxy '*'"} {
			res := h.sbx("exec", b, "bash", "-c", "curl -sS -m 5 "+flags+" "+target)
			if strings.Contains(res.stdout, "from-guest") {
				t.Errorf("sandbox %s reached %s's published port at %s (curl %s)", b, a, target, flags)
			}
		}
	}
	// Unpublish closes the host port at once.
	h.mustSbx("ports", a, "--unpublish", fmt.Sprintf("127.0.0.1:%d:8000", hostPort))
	if resp, err := http.Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("unpublished port still answers")
	}
}

// hostInEchos reads the host kernel's count of ICMP echo requests received.
func hostInEchos(t *testing.T) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	var names, values []string
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "Icmp: ") {
			continue
		}
		if names == nil {
			names = strings.Fields(line)
		} else {
			values = strings.Fields(line)
		}
	}
	for i, n := range names {
		if n == "InEchos" && i < len(values) {
			v, _ := strconv.ParseInt(values[i], 10, 64)
			return v
		}
	}
	t.Fatal("no Icmp InEchos in /proc/net/snmp")
	return 0
}
