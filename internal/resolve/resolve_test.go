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

	// The file is read once: a later change (or removal) changes nothing.
	write(t, path, "127.0.0.2 new.test\n", t0.Add(time.Minute))
	if !h.Mapped("api.test") || h.Mapped("new.test") {
		t.Error("a change to the file after NewHostsFile was picked up")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if !h.Mapped("api.test") {
		t.Error("api.test unmapped after the file was removed")
	}
}

func TestCheckHostsFile(t *testing.T) {
	uid := os.Getuid()
	dir := t.TempDir()
	ws := filepath.Join(dir, "ws")
	if err := os.MkdirAll(filepath.Join(ws, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "hosts")
	inWS := filepath.Join(ws, "sub", "hosts")
	link := filepath.Join(dir, "link")
	loose := filepath.Join(dir, "loose")
	for _, p := range []string{good, inWS, loose} {
		if err := os.WriteFile(p, []byte("127.0.0.1 a.test\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(loose, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(inWS, link); err != nil {
		t.Fatal(err)
	}
	openDir := filepath.Join(dir, "open")
	if err := os.Mkdir(openDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(openDir, 0o777); err != nil {
		t.Fatal(err)
	}
	inOpen := filepath.Join(openDir, "hosts")
	if err := os.WriteFile(inOpen, []byte("127.0.0.1 a.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path    string
		wantErr string
	}{
		{good, ""},
		{inWS, "inside the workspace"},
		{link, "inside the workspace"},
		{loose, "writable by other users"},
		{inOpen, "writable by other users"},
		{dir, "not a regular file"},
		{filepath.Join(dir, "missing"), "cannot read"},
	}
	for _, tt := range tests {
		real, err := CheckHostsFile(tt.path, []string{ws}, uid)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("CheckHostsFile(%s): %v", tt.path, err)
		case tt.wantErr == "" && real != tt.path:
			t.Errorf("CheckHostsFile(%s) = %s", tt.path, real)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("CheckHostsFile(%s) err = %v, want %q", tt.path, err, tt.wantErr)
		}
	}
	if uid == 0 {
		// Owned by someone else entirely.
		if err := os.Chown(good, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		if _, err := CheckHostsFile(good, nil, 1000); err == nil || !strings.Contains(err.Error(), "uid 4242") {
			t.Errorf("file of uid 4242: err = %v", err)
		}
	}
}

func FuzzParseHosts(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1 a.test b.test\n::1 a.test\n",
		"# comment\n\n10.0.0.1\tx.test # trailing\n",
		"fe80::1%eth0 x\n",
		"bad line\n",
		"::ffff:127.0.0.1 MAPPED.TEST.\n",
		"1.2.3.4 .\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		names, err := ParseHosts(data)
		if err != nil {
			return
		}
		for name, addrs := range names {
			if name == "" || name != canonical(name) || len(addrs) == 0 {
				t.Fatalf("name %q -> %v", name, addrs)
			}
			for _, a := range addrs {
				if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
					t.Fatalf("bad address %v for %q", a, name)
				}
			}
		}
	})
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
