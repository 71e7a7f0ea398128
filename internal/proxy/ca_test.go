package proxy

import (
	"bytes"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, caKeyFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s mode = %v, want %v", path, fi.Mode(), want)
		}
	}
	c := ca.Certificate()
	if !c.IsCA || c.Subject.CommonName != "sbx sandbox proxy CA" || c.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("CA cert: IsCA=%v CN=%q alg=%v", c.IsCA, c.Subject.CommonName, c.PublicKeyAlgorithm)
	}
	again, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca.CertPEM(), again.CertPEM()) {
		t.Error("second load generated a new CA")
	}
	if err := os.Chmod(filepath.Join(dir, caKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil {
		t.Error("loaded a CA whose key is world-readable")
	}
	if err := os.Remove(filepath.Join(dir, caCertFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil {
		t.Error("loaded a CA with its certificate missing")
	}
}

func TestLeaf(t *testing.T) {
	ca, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	for _, host := range []string{"api.test", "127.0.0.1", "::1"} {
		leaf, err := ca.Leaf(host)
		if err != nil {
			t.Fatal(err)
		}
		l := leaf.Leaf
		if _, err := l.Verify(x509.VerifyOptions{DNSName: host, Roots: pool}); err != nil {
			t.Errorf("%s: verify: %v", host, err)
		}
		if ip := net.ParseIP(host); ip != nil && (len(l.IPAddresses) != 1 || len(l.DNSNames) != 0) {
			t.Errorf("%s: SANs dns=%v ip=%v, want one IP", host, l.DNSNames, l.IPAddresses)
		}
		if d := now.Sub(l.NotBefore); d < 59*time.Minute || d > 61*time.Minute {
			t.Errorf("%s: backdated by %v, want 1h", host, d)
		}
		if d := l.NotAfter.Sub(now); d < 6*24*time.Hour || d > 8*24*time.Hour {
			t.Errorf("%s: valid for %v more, want about a week", host, d)
		}
		again, _ := ca.Leaf(host)
		if again != leaf {
			t.Errorf("%s: leaf not cached", host)
		}
	}
	// A leaf close to expiry is re-minted.
	first, _ := ca.Leaf("api.test")
	ca.now = func() time.Time { return now.Add(6*24*time.Hour + time.Hour) }
	if renewed, _ := ca.Leaf("api.test"); renewed == first {
		t.Error("leaf near expiry was not re-minted")
	}
}

func TestLeafConcurrentAndBounded(t *testing.T) {
	ca, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	ca.max = 8
	var wg sync.WaitGroup
	got := make([]any, 64)
	for i := range got {
		wg.Go(func() {
			l, err := ca.Leaf("same.test")
			if err != nil {
				t.Error(err)
			}
			got[i] = l
		})
	}
	wg.Wait()
	for i := range got {
		if got[i] != got[0] {
			t.Fatal("concurrent Leaf calls minted different certificates")
		}
	}
	for i := range 20 {
		if _, err := ca.Leaf(string(rune('a'+i)) + ".test"); err != nil {
			t.Fatal(err)
		}
	}
	ca.mu.Lock()
	n := ca.lru.Len()
	ca.mu.Unlock()
	if n != 8 {
		t.Errorf("cache holds %d leaves, want 8", n)
	}
}
