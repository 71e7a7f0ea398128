package secrets

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sbx-dev/sbx/internal/safefile"
)

// Files in the store's folder (Options.Dir/secrets, mode 0700).
const (
	// FileName holds the index (service, scope, time set, custom hosts and
	// placeholders) and, for the file backend, the values. Mode 0600.
	FileName = "secrets.json"
	lockName = "secrets.lock"
	// KeyringService is the Secret Service "service" attribute of sbx's
	// items; the "username" is ScopeKey/NAME.
	KeyringService = "sbx"
	fileVersion    = 1
)

// PlaceholderPrefix starts every custom secret's placeholder.
const PlaceholderPrefix = "sbx-ph-"

// Errors callers branch on.
var (
	// ErrNotFound: no secret of that name in that scope.
	ErrNotFound = errors.New("secret not found")
	// ErrUnknownService: the name is not a built-in service.
	ErrUnknownService = errors.New("unknown service")
	// ErrInvalid: a bad name, host, environment variable or value; the
	// error text names the field (never the value).
	ErrInvalid = errors.New("invalid secret")
	// ErrKeyringUnavailable: the value is kept in the Secret Service, which
	// this store was not given.
	ErrKeyringUnavailable = errors.New("secret service unavailable")
	// ErrDamaged: the index file is not valid JSON of the expected shape.
	// It comes wrapped in an *fs.PathError naming the file; the text adds
	// the byte offset or field, never the file's content.
	ErrDamaged = errors.New("the file is damaged")
)

// Keyring is the Secret Service seam (github.com/zalando/go-keyring's
// functions). Get returns an error wrapping ErrNotFound for a missing item
// (SystemKeyring maps keyring.ErrNotFound).
type Keyring interface {
	Get(service, user string) (string, error)
	Set(service, user, value string) error
	Delete(service, user string) error
}

// Options configures a Store.
type Options struct {
	// Dir is the configuration folder; the store lives in Dir/secrets.
	Dir string
	// Keyring, when set, keeps values in the Secret Service and only the
	// index in the file. Nil keeps values in the file (mode 0600). The
	// caller decides (the CLI: nil when SBX_HOME is set or no Secret
	// Service answers); this package reads no environment.
	Keyring Keyring
}

// Store keeps secrets, global or per sandbox. It is safe for concurrent use
// by several processes: writers serialise on a flock and replace the file
// atomically; readers read the file without the lock.
type Store struct {
	dir     string
	keyring Keyring
}

// NewStore returns a store; it touches nothing on disk until used.
func NewStore(o Options) *Store {
	return &Store{dir: filepath.Join(o.Dir, "secrets"), keyring: o.Keyring}
}

// Dir is the store's folder.
func (s *Store) Dir() string { return s.dir }

// Path is the index (and, with the file backend, value) file.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// UsesKeyring reports whether new values go to the Secret Service.
func (s *Store) UsesKeyring() bool { return s.keyring != nil }

// Entry describes a stored secret, never its value.
type Entry struct {
	// Name is the service (anthropic, ...) or, for a custom secret, its
	// environment variable.
	Name   string
	Custom bool
	// Scope is "" for global, else the sandbox id.
	Scope string
	SetAt time.Time
	// Hosts are the hosts a custom secret is bound to (nil for a service:
	// see its Provider).
	Hosts []string
	// Placeholder is what the guest sees in Name for a custom secret.
	Placeholder string
	// OAuth is set for a service value of the provider's OAuth variant.
	OAuth bool
	// InKeyring says the value is in the Secret Service, not the file.
	InKeyring bool
}

// Global reports whether the entry applies to every sandbox.
func (e Entry) Global() bool { return e.Scope == "" }

// BoundHosts are the hosts the secret may be sent to.
func (e Entry) BoundHosts() []string {
	if e.Custom {
		return e.Hosts
	}
	p, _ := LookupProvider(e.Name)
	return p.Hosts()
}

// GuestEnv is what the guest sees for this entry (VAR=VALUE lines). A
// custom secret whose variable is reserved (stored before sbx refused
// such names; see ReservedEnv) gives nothing: it would break the guest.
func (e Entry) GuestEnv() []string {
	if e.Custom {
		if ReservedEnv(e.Name) != "" {
			return nil
		}
		return []string{e.Name + "=" + e.Placeholder}
	}
	p, ok := LookupProvider(e.Name)
	if !ok {
		return nil
	}
	vars := p.Env
	if e.OAuth {
		vars = p.OAuthEnv
	}
	out := make([]string, 0, len(vars))
	for _, v := range vars {
		out = append(out, v+"="+Sentinel)
	}
	return out
}

func (e Entry) keyringUser() string {
	scope := "global"
	if e.Scope != "" {
		scope = "sandbox/" + e.Scope
	}
	kind := "service"
	if e.Custom {
		kind = "custom"
	}
	return scope + "/" + kind + "/" + e.Name
}

// Binding is an entry in effect for a sandbox, with its value.
type Binding struct {
	Entry
	Value Secret
}

// file is the on-disk format.
type file struct {
	Version int           `json:"version"`
	Entries []storedEntry `json:"entries"`
}

type storedEntry struct {
	Name        string    `json:"name"`
	Custom      bool      `json:"custom,omitempty"`
	Scope       string    `json:"scope,omitempty"`
	SetAt       time.Time `json:"setAt"`
	Hosts       []string  `json:"hosts,omitempty"`
	Placeholder string    `json:"placeholder,omitempty"`
	OAuth       bool      `json:"oauth,omitempty"`
	InKeyring   bool      `json:"keyring,omitempty"`
	// Value is set only with the file backend.
	Value string `json:"value,omitempty"`
}

func (se storedEntry) entry() Entry {
	return Entry{
		Name: se.Name, Custom: se.Custom, Scope: se.Scope, SetAt: se.SetAt,
		Hosts: slices.Clone(se.Hosts), Placeholder: se.Placeholder, OAuth: se.OAuth, InKeyring: se.InKeyring,
	}
}

func (se storedEntry) same(name string, custom bool, scope string) bool {
	return se.Name == name && se.Custom == custom && se.Scope == scope
}

// load reads the file; a missing file is empty.
func (s *Store) load() (file, error) {
	data, err := os.ReadFile(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return file{Version: fileVersion}, nil
	}
	if err != nil {
		return file{}, fmt.Errorf("read secrets: %w", err)
	}
	var f file
	if err := json.Unmarshal(data, &f); err != nil {
		// The JSON decoder's messages quote at most a token type and offset.
		return file{}, &fs.PathError{Op: "read", Path: s.Path(), Err: fmt.Errorf("%w: %s", ErrDamaged, scrubJSONError(err))}
	}
	if f.Version != fileVersion {
		return file{}, fmt.Errorf("parse %s: version %d is not supported (want %d)", s.Path(), f.Version, fileVersion)
	}
	return f, nil
}

// scrubJSONError keeps only the kind of a JSON error: syntax errors may
// quote a character of the file, which could belong to a value.
func scrubJSONError(err error) string {
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return fmt.Sprintf("malformed JSON at byte %d", se.Offset)
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		return fmt.Sprintf("wrong type for field %q", te.Field)
	}
	return "malformed JSON"
}

// List returns every entry, global first, then by scope and name.
func (s *Store) List() ([]Entry, error) {
	f, err := s.load()
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(f.Entries))
	for _, se := range f.Entries {
		out = append(out, se.entry())
	}
	slices.SortFunc(out, func(a, b Entry) int {
		if c := strings.Compare(a.Scope, b.Scope); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// checkValue refuses empty values and values that cannot go in a header.
func checkValue(v Secret) error {
	val := v.Reveal()
	if val == "" {
		return fmt.Errorf("%w: the value is empty", ErrInvalid)
	}
	if strings.ContainsAny(val, "\r\n\x00") {
		return fmt.Errorf("%w: the value contains a line break or NUL", ErrInvalid)
	}
	return nil
}

// Set stores the value of built-in service name for scope ("" global, else
// a sandbox id), replacing any previous one.
func (s *Store) Set(name, scope string, value Secret) (Entry, error) {
	p, ok := LookupProvider(name)
	if !ok {
		return Entry{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownService, name, strings.Join(ProviderNames(), ", "))
	}
	if err := checkValue(value); err != nil {
		return Entry{}, err
	}
	se := storedEntry{Name: name, Scope: scope, OAuth: p.isOAuth(value.Reveal())}
	return s.put(se, value)
}

// Custom describes a custom secret.
type Custom struct {
	// Env is the guest variable that receives the placeholder.
	Env string
	// Hosts the value may be sent to (exact names; ports are ignored).
	Hosts []string
	// Scope is "" for global, else a sandbox id.
	Scope string
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Why a variable is reserved, for messages.
const (
	reservedBasic = "the guest's shells and programs depend on it"
	reservedProxy = "sbx sets it in the guest to send traffic through its proxy"
	reservedCA    = "sbx sets it, or TLS clients read it, to trust the sandbox proxy's certificate"
)

// reservedEnv are the variables a custom secret may not take (exact
// names: the programs that read them match case).
var reservedEnv = map[string]string{
	"PATH": reservedBasic, "HOME": reservedBasic, "USER": reservedBasic,
	"LOGNAME": reservedBasic, "SHELL": reservedBasic, "TERM": reservedBasic,
	"PWD": reservedBasic, "OLDPWD": reservedBasic, "LANG": reservedBasic,
	"LANGUAGE": reservedBasic, "TZ": reservedBasic, "TMPDIR": reservedBasic,
	"IFS": reservedBasic, "ENV": reservedBasic, "BASH_ENV": reservedBasic,
	"SHELLOPTS": reservedBasic, "BASHOPTS": reservedBasic,
	"NODE_EXTRA_CA_CERTS": reservedCA, "SSL_CERT_FILE": reservedCA,
	"SSL_CERT_DIR": reservedCA, "REQUESTS_CA_BUNDLE": reservedCA,
	"CURL_CA_BUNDLE": reservedCA, "GIT_SSL_CAINFO": reservedCA,
	"GIT_SSL_CAPATH": reservedCA, "PROXY_CA_CERT_B64": reservedCA,
}

// reservedProxyEnv are read in any case (curl takes http_proxy, Go and
// Python HTTP_PROXY or http_proxy), so they are compared case-insensitively.
var reservedProxyEnv = []string{"http_proxy", "https_proxy", "no_proxy", "all_proxy", "ftp_proxy"}

// ReservedEnv returns why a custom secret may not use the variable name
// ("" when it may): sbx sets it in the guest (the proxy and CA
// variables, any case for the proxy ones), or the guest's basic operation
// depends on it (PATH, HOME, LANG and LC_*, LD_* ...). The full list is in
// docs/secrets.md.
func ReservedEnv(name string) string {
	if why, ok := reservedEnv[name]; ok {
		return why
	}
	for _, p := range reservedProxyEnv {
		if strings.EqualFold(name, p) {
			return reservedProxy
		}
	}
	switch {
	case strings.HasPrefix(name, "LC_"):
		return reservedBasic
	case strings.HasPrefix(name, "LD_"):
		return "the dynamic loader reads it"
	}
	return ""
}

// NormalizeHost lower-cases host and drops a trailing dot, brackets and a
// port ("Example.COM.:8443" → "example.com", "[::1]:443" → "::1").
func NormalizeHost(host string) string {
	h := strings.ToLower(strings.TrimSpace(host))
	if hh, port, err := net.SplitHostPort(h); err == nil && isDigits(port) {
		h = hh
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.TrimSuffix(h, ".")
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// validate checks a custom secret's fields, every problem at once.
func (c *Custom) validate() error {
	var errs []error
	if !envName.MatchString(c.Env) {
		errs = append(errs, fmt.Errorf("%w: environment variable %q is not a valid name (letters, digits and _, not starting with a digit)", ErrInvalid, c.Env))
	} else if why := ReservedEnv(c.Env); why != "" {
		errs = append(errs, fmt.Errorf("%w: environment variable %s is reserved (%s); choose another name, such as MY_%s", ErrInvalid, c.Env, why, strings.ToUpper(c.Env)))
	}
	if _, ok := LookupProvider(c.Env); ok {
		errs = append(errs, fmt.Errorf("%w: %q is a built-in service name", ErrInvalid, c.Env))
	}
	for _, p := range Providers {
		if slices.Contains(p.Env, c.Env) || slices.Contains(p.OAuthEnv, c.Env) {
			errs = append(errs, fmt.Errorf("%w: %s belongs to the built-in service %s (use sbx secret set %s)", ErrInvalid, c.Env, p.Name, p.Name))
		}
	}
	if len(c.Hosts) == 0 {
		errs = append(errs, fmt.Errorf("%w: at least one host is needed", ErrInvalid))
	}
	var hosts []string
	for _, h := range c.Hosts {
		n := NormalizeHost(h)
		if n == "" || strings.ContainsAny(h, "/") || strings.ContainsAny(n, " /\\@*?#") || strings.Contains(n, "://") {
			errs = append(errs, fmt.Errorf("%w: host %q is not a host name (give it without scheme, path or wildcard)", ErrInvalid, h))
			continue
		}
		if !slices.Contains(hosts, n) {
			hosts = append(hosts, n)
		}
	}
	c.Hosts = hosts
	return errors.Join(errs...)
}

// SetCustom stores a custom secret. The placeholder is kept when the same
// variable is set again in the same scope (running guests already hold
// it), else a new random one is made.
func (s *Store) SetCustom(c Custom, value Secret) (Entry, error) {
	if err := errors.Join(c.validate(), checkValue(value)); err != nil {
		return Entry{}, err
	}
	// The echo of a shorter value cannot be told from ordinary text, so
	// it could be neither scrubbed from responses nor caught on its way
	// elsewhere: refuse it rather than promise what cannot be kept.
	if n := len(value.Reveal()); n < minValueScan {
		return Entry{}, fmt.Errorf("%w: the value is %d bytes; a custom secret must be at least %d bytes (or its echo could not be kept out of the sandbox)", ErrInvalid, n, minValueScan)
	}
	se := storedEntry{Name: c.Env, Custom: true, Scope: c.Scope, Hosts: c.Hosts}
	return s.put(se, value)
}

func newPlaceholder() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return PlaceholderPrefix + hex.EncodeToString(b)
}

// put writes se with value under the lock.
func (s *Store) put(se storedEntry, value Secret) (Entry, error) {
	unlock, err := s.lock()
	if err != nil {
		return Entry{}, err
	}
	defer unlock()
	f, err := s.load()
	if err != nil {
		return Entry{}, err
	}
	se.SetAt = time.Now().UTC().Truncate(time.Second)
	idx := slices.IndexFunc(f.Entries, func(o storedEntry) bool { return o.same(se.Name, se.Custom, se.Scope) })
	var old storedEntry
	if idx >= 0 {
		old = f.Entries[idx]
	}
	if se.Custom {
		se.Placeholder = old.Placeholder
		if se.Placeholder == "" {
			se.Placeholder = newPlaceholder()
		}
	}
	if s.keyring != nil {
		se.InKeyring = true
		if err := s.keyring.Set(KeyringService, se.entry().keyringUser(), value.Reveal()); err != nil {
			return Entry{}, fmt.Errorf("save %s in the secret service: %w", se.Name, scrub(err, value))
		}
	} else {
		se.Value = value.Reveal()
	}
	if idx >= 0 {
		f.Entries[idx] = se
	} else {
		f.Entries = append(f.Entries, se)
	}
	if err := s.writeLocked(f); err != nil {
		return Entry{}, err
	}
	// An old value kept in the Secret Service by a store with a keyring stays
	// there when a file-backed store replaces it; the file now holds the
	// current one and the index no longer names the item.
	return se.entry(), nil
}

// Remove deletes secret name (a service, or a custom secret's variable) in
// scope. It returns ErrNotFound when there is none.
func (s *Store) Remove(name, scope string) (Entry, error) {
	var removed []storedEntry
	err := s.update(func(f *file) {
		f.Entries = slices.DeleteFunc(f.Entries, func(se storedEntry) bool {
			if se.Name == name && se.Scope == scope {
				removed = append(removed, se)
				return true
			}
			return false
		})
	})
	if err != nil {
		return Entry{}, err
	}
	if len(removed) == 0 {
		return Entry{}, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	return removed[0].entry(), s.deleteValues(removed)
}

// RemoveSandbox deletes every secret scoped to sandbox id and returns how
// many there were. Call it when the sandbox is removed. It is idempotent.
func (s *Store) RemoveSandbox(id string) (int, error) {
	if id == "" {
		return 0, nil
	}
	if _, err := os.Stat(s.Path()); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	var removed []storedEntry
	err := s.update(func(f *file) {
		f.Entries = slices.DeleteFunc(f.Entries, func(se storedEntry) bool {
			if se.Scope == id {
				removed = append(removed, se)
				return true
			}
			return false
		})
	})
	if err != nil {
		return 0, fmt.Errorf("remove secrets of sandbox %s: %w", id, err)
	}
	return len(removed), s.deleteValues(removed)
}

// deleteValues removes keyring items of removed entries (after the index
// no longer names them).
func (s *Store) deleteValues(removed []storedEntry) error {
	var errs []error
	for _, se := range removed {
		if !se.InKeyring {
			continue
		}
		if s.keyring == nil {
			errs = append(errs, fmt.Errorf("delete %s from the secret service: %w", se.Name, ErrKeyringUnavailable))
			continue
		}
		if err := s.keyring.Delete(KeyringService, se.entry().keyringUser()); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, fmt.Errorf("delete %s from the secret service: %w", se.Name, err))
		}
	}
	return errors.Join(errs...)
}

// update changes the file under the lock (write only if there was a file
// or fn left entries).
func (s *Store) update(fn func(*file)) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	f, err := s.load()
	if err != nil {
		return err
	}
	fn(&f)
	return s.writeLocked(f)
}

// Effective returns the secrets in effect for sandboxID, with their values:
// for each service and each custom variable, the sandbox's own entry if it
// has one, else the global one. An empty sandboxID gives the global ones.
// Entries whose value cannot be read are left out and reported in the
// joined error (which names them, never a value); the rest come back.
func (s *Store) Effective(sandboxID string) ([]Binding, error) {
	f, err := s.load()
	if err != nil {
		return nil, err
	}
	var out []Binding
	var errs []error
	for _, se := range effective(f.Entries, sandboxID) {
		b := Binding{Entry: se.entry()}
		switch {
		case !se.InKeyring:
			b.Value = New(se.Value)
		case s.keyring == nil:
			errs = append(errs, fmt.Errorf("read %s: %w", se.Name, ErrKeyringUnavailable))
			continue
		default:
			v, err := s.keyring.Get(KeyringService, se.entry().keyringUser())
			if err != nil {
				errs = append(errs, fmt.Errorf("read %s from the secret service: %w", se.Name, err))
				continue
			}
			b.Value = New(v)
		}
		out = append(out, b)
	}
	return out, errors.Join(errs...)
}

// effective picks, per (name, custom), the sandbox entry over the global.
func effective(all []storedEntry, sandboxID string) []storedEntry {
	var out []storedEntry
	for _, se := range all {
		if se.Scope != "" && se.Scope != sandboxID {
			continue
		}
		i := slices.IndexFunc(out, func(o storedEntry) bool { return o.Name == se.Name && o.Custom == se.Custom })
		switch {
		case i < 0:
			out = append(out, se)
		case se.Scope != "":
			out[i] = se
		}
	}
	slices.SortFunc(out, func(a, b storedEntry) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// GuestEnv returns the VAR=VALUE lines the guest of sandboxID gets: the
// sentinel for each service in effect, the placeholder for each custom
// secret. It reads no value. A custom secret under a reserved variable
// (stored by an older sbx) is left out, and the error names it; the other
// lines still come back.
func (s *Store) GuestEnv(sandboxID string) ([]string, error) {
	f, err := s.load()
	if err != nil {
		return nil, err
	}
	var env []string
	var errs []error
	for _, se := range effective(f.Entries, sandboxID) {
		if se.Custom {
			if why := ReservedEnv(se.Name); why != "" {
				errs = append(errs, fmt.Errorf("custom secret %s is not given to the guest: the variable is reserved (%s); remove it with `sbx secret rm %s` and set it under another name", se.Name, why, se.Name))
				continue
			}
		}
		env = append(env, se.entry().GuestEnv()...)
	}
	return env, errors.Join(errs...)
}

// stamp identifies a version of the file, to notice changes cheaply.
type stamp struct {
	exists bool
	mod    time.Time
	size   int64
	ino    uint64
}

func (s *Store) stamp() (stamp, error) {
	st, err := os.Stat(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return stamp{}, nil
	}
	if err != nil {
		return stamp{}, err
	}
	sp := stamp{exists: true, mod: st.ModTime(), size: st.Size()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		sp.ino = sys.Ino
	}
	return sp, nil
}

// ensureDir creates the store's folder 0700 (and tightens it if it exists).
func (s *Store) ensureDir() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create secrets folder: %w", err)
	}
	if err := os.Chmod(s.dir, 0o700); err != nil {
		return fmt.Errorf("secure secrets folder: %w", err)
	}
	return nil
}

// Preconditions: s.lock is held.
func (s *Store) writeLocked(f file) error {
	f.Version = fileVersion
	if f.Entries == nil {
		f.Entries = []storedEntry{}
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode secrets: %w", err)
	}
	data = append(data, '\n')
	tmp, err := os.CreateTemp(s.dir, ".secrets-*.tmp")
	if err != nil {
		return fmt.Errorf("write secrets: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write secrets: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write secrets: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write secrets: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write secrets: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.Path()); err != nil {
		return fmt.Errorf("write secrets: %w", err)
	}
	if d, err := os.Open(s.dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func (s *Store) lock() (func(), error) {
	if err := s.ensureDir(); err != nil {
		return nil, err
	}
	return safefile.Lock(context.Background(), filepath.Join(s.dir, lockName))
}

// scrub returns err with any occurrence of the value replaced by Redacted.
func scrub(err error, v Secret) error {
	if err == nil || v.IsZero() || !strings.Contains(err.Error(), v.Reveal()) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), v.Reveal(), Redacted))
}
