package resolve

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeNext map[string][]netip.Addr

func (f fakeNext) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func write(t *testing.T, path, data string, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestHostsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts")
	t0 := time.Now().Add(-time.Hour)
	write(t, path, `# test names
127.0.0.1   api.test  Other.Test.   # trailing comment
::1         api.test
10.0.0.7    v4only.test

`, t0)
	next := fakeNext{"real.example": addrs("93.184.216.34")}
	h, err := NewHostsFile(path, next)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	tests := []struct {
		network, host string
		want          []netip.Addr
		notFound      bool
	}{
		{"ip", "api.test", addrs("127.0.0.1", "::1"), false},
		{"ip4", "API.TEST.", addrs("127.0.0.1"), false},
		{"ip6", "api.test", addrs("::1"), false},
		{"ip", "other.test", addrs("127.0.0.1"), false},
		{"ip6", "v4only.test", nil, true},
		{"ip", "real.example", addrs("93.184.216.34"), false},
		{"ip", "missing.example", nil, true},
	}
	for _, tt := range tests {
		got, err := h.LookupNetIP(ctx, tt.network, tt.host)
		if tt.notFound {
			var dnsErr *net.DNSError
			if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
				t.Errorf("LookupNetIP(%s, %s) err = %v, want not found", tt.network, tt.host, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("LookupNetIP(%s, %s): %v", tt.network, tt.host, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("LookupNetIP(%s, %s) (-want +got):\n%s", tt.network, tt.host, diff)
		}
	}
	if !h.Mapped("api.test") || h.Mapped("real.example") {
		t.Errorf("Mapped: api.test=%v real.example=%v, want true false", h.Mapped("api.test"), h.Mapped("real.example"))
	}

	// A change is picked up on the next lookup.
	write(t, path, "127.0.0.2 new.test\n", t0.Add(time.Minute))
	if h.Mapped("api.test") {
		t.Error("api.test still mapped after the file changed")
	}
	got, err := h.LookupNetIP(ctx, "ip", "new.test")
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("after reload: got %v, %v; want 127.0.0.2", got, err)
	}

	// A broken file keeps the last good mapping and reports why.
	write(t, path, "not-an-ip broken.test\n", t0.Add(2*time.Minute))
	if !h.Mapped("new.test") || h.Err() == nil {
		t.Errorf("after bad reload: Mapped(new.test)=%v Err=%v; want true and an error", h.Mapped("new.test"), h.Err())
	}

	// A removed file empties the override.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if h.Mapped("new.test") {
		t.Error("new.test still mapped after the file was removed")
	}
}

func TestParseHostsErrors(t *testing.T) {
	_, err := ParseHosts([]byte("1.2.3.4\nbad host\nfe80::1%eth0 x\n1.2.3.4 ok\n"))
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"line 1", "line 2", "line 3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestNewHostsFileMissing(t *testing.T) {
	if _, err := NewHostsFile(filepath.Join(t.TempDir(), "nope"), nil); err == nil {
		t.Fatal("want error for missing file")
	}
}
