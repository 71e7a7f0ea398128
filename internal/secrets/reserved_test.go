package secrets

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
)

// Found by the twelfth outside review; fails on the code before its fix.
// A custom secret could take any variable: --env PATH left every sandbox
// without bash ("executable file not found in $PATH"), --env HTTPS_PROXY
// sent the guest's traffic to a placeholder instead of the proxy.
func TestCustomReservedEnvRefused(t *testing.T) {
	st := newTestStore(t)
	for _, name := range []string{
		"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "PWD", "LANG", "LC_ALL", "LC_CTYPE", "TZ",
		"LD_PRELOAD", "LD_LIBRARY_PATH", "HTTP_PROXY", "HTTPS_PROXY", "Https_Proxy", "https_proxy",
		"no_proxy", "NO_PROXY", "ALL_PROXY", "ftp_proxy", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE",
		"SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PROXY_CA_CERT_B64",
	} {
		_, err := st.SetCustom(Custom{Env: name, Hosts: []string{"x.test"}}, New("v-value-1234"))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), name+" is reserved") {
			t.Errorf("--env %s: %v, want it refused as reserved", name, err)
		}
	}
	// Names that only look alike are free: the loader reads LD_*, not
	// LDAP_*, and PATH is matched by case.
	for _, name := range []string{"MY_PATH", "LDAP_TOKEN", "LCD_KEY", "HTTPS_PROXY_TOKEN", "Path"} {
		if _, err := st.SetCustom(Custom{Env: name, Hosts: []string{"x.test"}}, New("v-value-1234")); err != nil {
			t.Errorf("--env %s refused: %v", name, err)
		}
	}
	for _, name := range []string{"A-B", "A=B", "", "1X", "X Y", "É"} {
		if _, err := st.SetCustom(Custom{Env: name, Hosts: []string{"x.test"}}, New("v-value-1234")); !errors.Is(err, ErrInvalid) {
			t.Errorf("--env %q accepted: %v", name, err)
		}
	}
}

// A custom secret under a reserved name stored before the check is not
// given to the guest (it would break it); the error names it so the
// supervisor logs a warning, and the other secrets still come through.
func TestStoredReservedEnvSkipped(t *testing.T) {
	st := newTestStore(t)
	if err := os.MkdirAll(st.Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	data := `{"version":1,"entries":[
{"name":"PATH","custom":true,"setAt":"2025-01-01T00:00:00Z","hosts":["x.test"],"placeholder":"sbx-ph-aaaa","value":"v-value-1234"},
{"name":"GOOD","custom":true,"setAt":"2025-01-01T00:00:00Z","hosts":["x.test"],"placeholder":"sbx-ph-bbbb","value":"v-value-5678"}]}`
	if err := os.WriteFile(st.Path(), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	env, err := st.GuestEnv("")
	if len(env) != 1 || env[0] != "GOOD=sbx-ph-bbbb" {
		t.Errorf("GuestEnv = %q, want only GOOD", env)
	}
	if err == nil || !strings.Contains(err.Error(), "PATH") || !strings.Contains(err.Error(), "sbx secret rm PATH") || strings.Contains(err.Error(), "v-value") {
		t.Errorf("GuestEnv error = %v, want one naming PATH (and no value)", err)
	}
	if got := (Entry{Name: "PATH", Custom: true, Placeholder: "sbx-ph-aaaa"}).GuestEnv(); got != nil {
		t.Errorf("Entry.GuestEnv of a reserved custom secret = %q", got)
	}
	// The injector still hands the guest what it can.
	if env := NewInjector(st, "", nil, nil).GuestEnv(); len(env) != 1 {
		t.Errorf("Injector.GuestEnv = %q", env)
	}
}

// A damaged index is ErrDamaged in an *fs.PathError naming the file, with
// the byte offset, never the file's content, so the CLI can show it and
// say which file to move away.
func TestDamagedIndexError(t *testing.T) {
	st := newTestStore(t)
	if err := os.MkdirAll(st.Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(st.Path(), []byte(`{"version":1,"entries":[{"name":"openai","value":"`+testValue+`"`), 0o600)
	_, err := st.List()
	pe, ok := errors.AsType[*fs.PathError](err)
	if !errors.Is(err, ErrDamaged) || !ok || pe.Path != st.Path() {
		t.Fatalf("List of a damaged file = %v, want ErrDamaged naming %s", err, st.Path())
	}
	if !strings.Contains(err.Error(), "at byte") || strings.Contains(err.Error(), testValue) {
		t.Errorf("error %q: want the offset, never the value", err)
	}
}
