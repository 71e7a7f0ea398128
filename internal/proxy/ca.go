package proxy

import (
	"container/list"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/sbx-dev/sbx/internal/safefile"
)

// CA file names inside the directory given to LoadOrCreateCA.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca-key.pem"
)

// CA is the per-install certificate authority that signs the leaf
// certificates the proxy shows when it terminates TLS. Leaves are cached in
// memory (bounded LRU) and minted at most once per host at a time. A CA is
// safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey

	// now is the clock; tests may replace it before first use.
	now func() time.Time

	flight singleflight.Group

	mu    sync.Mutex
	lru   *list.List               // guarded by mu; front = most recently used *leafEntry
	items map[string]*list.Element // guarded by mu
	max   int
}

type leafEntry struct {
	host string
	cert *tls.Certificate
}

// Leaf certificate parameters.
const (
	leafBackdate = time.Hour
	leafValidity = 7 * 24 * time.Hour
	leafCacheMax = 1024
	caName       = "sbx sandbox proxy CA"
)

// LoadOrCreateCA loads the CA kept in dir (ca.pem, ca-key.pem), generating
// an ECDSA P-256 CA named "sbx sandbox proxy CA" on first use. dir belongs
// to the CA: it is created (or reset to) 0700 and the key written 0600; an
// existing key file readable by group or others is refused. Creation is not
// guarded against a concurrent creator in another process; the supervisor
// creates the CA once per install before starting sandboxes.
func LoadOrCreateCA(dir string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ca dir: %w", err)
	}
	// The directory is the CA's own: tighten it if it was made looser.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict ca dir: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := os.ReadFile(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		fi, err := os.Stat(keyPath)
		if err != nil {
			return nil, fmt.Errorf("stat ca key: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("ca key %s has mode %v, want 0600", keyPath, fi.Mode().Perm())
		}
		return parseCA(certPEM, keyPEM)
	case errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("load ca from %s: cert: %v, key: %v", dir, cerr, kerr)
	}
	certPEM, keyPEM, err := generateCA(time.Now())
	if err != nil {
		return nil, err
	}
	if err := safefile.Write(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write ca key: %w", err)
	}
	if err := safefile.Write(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("write ca cert: %w", err)
	}
	return parseCA(certPEM, keyPEM)
}

func generateCA(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ca key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: caName, Organization: []string{"sbx"}},
		NotBefore:             now.Add(-leafBackdate),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create ca certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal ca key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func parseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, errors.New("parse ca certificate: no CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("parse ca key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse ca key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("parse ca key: unsupported key type %T", k)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("parse ca: key does not match certificate")
	}
	return &CA{
		cert: cert, certPEM: certPEM, key: key, now: time.Now,
		lru: list.New(), items: make(map[string]*list.Element), max: leafCacheMax,
	}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand never fails on supported platforms.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// CertPEM returns the CA certificate in PEM form, for the guest to trust.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// Certificate returns the parsed CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Leaf returns a certificate for host (a DNS name or an IP literal, without
// port), signed by the CA, backdated one hour and valid for a week. Leaves
// are cached and re-minted when less than a day of validity remains;
// concurrent calls for the same host share one minting.
func (ca *CA) Leaf(host string) (*tls.Certificate, error) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" {
		return nil, errors.New("mint leaf: empty host")
	}
	now := ca.now()
	if c := ca.cached(host, now); c != nil {
		return c, nil
	}
	v, err, _ := ca.flight.Do(host, func() (any, error) {
		if c := ca.cached(host, now); c != nil {
			return c, nil
		}
		c, err := ca.mint(host, now)
		if err != nil {
			return nil, err
		}
		ca.mu.Lock()
		defer ca.mu.Unlock()
		if el, ok := ca.items[host]; ok {
			el.Value = &leafEntry{host: host, cert: c}
			ca.lru.MoveToFront(el)
		} else {
			ca.items[host] = ca.lru.PushFront(&leafEntry{host: host, cert: c})
		}
		for ca.lru.Len() > ca.max {
			old := ca.lru.Back()
			ca.lru.Remove(old)
			delete(ca.items, old.Value.(*leafEntry).host)
		}
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

// cached returns the cached leaf for host if it has more than a day of
// validity left, marking it recently used.
func (ca *CA) cached(host string, now time.Time) *tls.Certificate {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	el, ok := ca.items[host]
	if !ok {
		return nil
	}
	e := el.Value.(*leafEntry)
	if !now.Add(24 * time.Hour).Before(e.cert.Leaf.NotAfter) {
		return nil
	}
	ca.lru.MoveToFront(el)
	return e.cert
}

func (ca *CA) mint(host string, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mint leaf for %s: %w", host, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: host},
		NotBefore:             now.Add(-leafBackdate),
		NotAfter:              now.Add(leafValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else {
		tmpl.DNSNames = []string{host}
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("mint leaf for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("mint leaf for %s: %w", host, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}
