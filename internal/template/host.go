package template

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// HostRelease is the Debian suite and mirror the host's apt uses; the
// default template is built from the same ones.
type HostRelease struct {
	Suite  string // VERSION_CODENAME from os-release, e.g. "bookworm"
	Mirror string // first "deb" URI in the apt sources, e.g. "http://.../debian"
}

// SafeMirror is Mirror without its user info, for messages: the
// credentials of a private mirror are for the build's downloads only.
func (hr HostRelease) SafeMirror() string { return stripUserinfo(hr.Mirror) }

// ErrNoMirror is returned when no Debian mirror is configured for apt.
var ErrNoMirror = errors.New("no deb mirror found in the apt sources")

// DetectHostRelease reads root/etc/os-release and the apt sources under
// root/etc/apt (sources.list, then sources.list.d/*.list and *.sources in
// deb822 form). root is "/" for the host. Mirrors whose suite ends in
// -security, -updates or -backports are only used when there is no other.
func DetectHostRelease(root string) (HostRelease, error) {
	var hr HostRelease
	osr, err := os.ReadFile(filepath.Join(root, "etc/os-release"))
	if err != nil {
		return hr, fmt.Errorf("read os-release: %w", err)
	}
	for line := range strings.SplitSeq(string(osr), "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok {
			hr.Suite = strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	if hr.Suite == "" {
		return hr, fmt.Errorf("no VERSION_CODENAME in %s (building the default template needs a Debian host)", filepath.Join(root, "etc/os-release"))
	}
	var entries []aptSource
	if b, err := os.ReadFile(filepath.Join(root, "etc/apt/sources.list")); err == nil {
		entries = append(entries, parseOneLine(strings.NewReader(string(b)))...)
	}
	d := filepath.Join(root, "etc/apt/sources.list.d")
	lists, _ := filepath.Glob(filepath.Join(d, "*.list"))
	debs, _ := filepath.Glob(filepath.Join(d, "*.sources"))
	for _, p := range lists {
		if b, err := os.ReadFile(p); err == nil {
			entries = append(entries, parseOneLine(strings.NewReader(string(b)))...)
		}
	}
	for _, p := range debs {
		if b, err := os.ReadFile(p); err == nil {
			entries = append(entries, parseDeb822(string(b))...)
		}
	}
	var fallback string
	for _, e := range entries {
		if e.suite == hr.Suite {
			hr.Mirror = e.uri
			return hr, nil
		}
		if fallback == "" && strings.HasPrefix(e.suite, hr.Suite) && !strings.HasSuffix(e.suite, "-security") {
			fallback = e.uri
		}
	}
	if fallback == "" {
		return hr, fmt.Errorf("%w for suite %s (add one to /etc/apt/sources.list)", ErrNoMirror, hr.Suite)
	}
	hr.Mirror = fallback
	return hr, nil
}

type aptSource struct{ uri, suite string }

// parseOneLine reads one-line-style entries: "deb [opts] URI SUITE COMP...".
func parseOneLine(r io.Reader) []aptSource {
	var out []aptSource
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 2 {
			out = append(out, aptSource{uri: f[0], suite: f[1]})
		}
	}
	return out
}

// parseDeb822 reads deb822 stanzas (Types, URIs, Suites; Enabled: no skips).
func parseDeb822(s string) []aptSource {
	var out []aptSource
	for stanza := range strings.SplitSeq(strings.ReplaceAll(s, "\r\n", "\n"), "\n\n") {
		fields := map[string]string{}
		for line := range strings.SplitSeq(stanza, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok || strings.HasPrefix(line, " ") {
				continue
			}
			fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
		if !strings.Contains(" "+fields["types"]+" ", " deb ") || strings.EqualFold(fields["enabled"], "no") {
			continue
		}
		for _, u := range strings.Fields(fields["uris"]) {
			for _, su := range strings.Fields(fields["suites"]) {
				out = append(out, aptSource{uri: u, suite: su})
			}
		}
	}
	return out
}

// userinfoRE matches the scheme and user info of a URI, up to the last "@"
// before the host ("https://alice:pw@"), so it can be cut out.
var userinfoRE = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@`)

// stripUserinfo removes the user info from every URI in s and leaves the
// rest of s as it is.
func stripUserinfo(s string) string { return userinfoRE.ReplaceAllString(s, "$1") }

// mirrorRedactor returns a func that cuts the credentials of mirror out of
// text the build's tools print: URIs lose their user info, and the secret
// (the password, or a token given as the user) becomes "***" wherever it
// appears on its own. It is nil when mirror has none.
func mirrorRedactor(mirror string) func(string) string {
	m := userinfoRE.FindString(mirror)
	if m == "" {
		return nil
	}
	info := m[strings.Index(m, "://")+3 : len(m)-1]
	user, pass, hasPass := strings.Cut(info, ":")
	secret := user
	if hasPass {
		secret = pass
	}
	var pairs []string
	for _, s := range []string{info, secret} {
		pairs = append(pairs, s, "***")
		if u, err := url.PathUnescape(s); err == nil && u != s {
			pairs = append(pairs, u, "***")
		}
	}
	r := strings.NewReplacer(pairs...)
	return func(s string) string { return r.Replace(stripUserinfo(s)) }
}

// redactWriter passes on what is written with redact applied. It holds
// back the last partial line, so a secret split across writes is still
// caught; flush writes it.
type redactWriter struct {
	mu     sync.Mutex
	w      io.Writer
	redact func(string) string
	buf    []byte
}

// redactProgress wraps the build's progress writer when the mirror has
// credentials, so the tools' output does not show them; call flush when
// the build ends.
func redactProgress(w io.Writer, mirror string) (io.Writer, func()) {
	redact := mirrorRedactor(mirror)
	if redact == nil {
		return w, func() {}
	}
	rw := &redactWriter{w: w, redact: redact}
	return rw, rw.flush
}

func (rw *redactWriter) Write(p []byte) (int, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	rw.buf = append(rw.buf, p...)
	i := bytes.LastIndexAny(rw.buf, "\r\n")
	if i < 0 && len(rw.buf) < 64<<10 {
		return len(p), nil
	}
	if i < 0 {
		i = len(rw.buf) - 1
	}
	_, err := io.WriteString(rw.w, rw.redact(string(rw.buf[:i+1])))
	rw.buf = append(rw.buf[:0], rw.buf[i+1:]...)
	return len(p), err
}

func (rw *redactWriter) flush() {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if len(rw.buf) > 0 {
		io.WriteString(rw.w, rw.redact(string(rw.buf)))
		rw.buf = nil
	}
}

// scrubAptSources removes the user info from every URI in the apt sources
// of the tree root (sources.list and the files in sources.list.d, one-line
// and deb822 alike). debootstrap writes the mirror it got, credentials and
// all, and apt in the build needs them, but no secret may reach a sandbox.
// Files that are not regular (a symlink may point out of the tree) are an
// error rather than followed.
func scrubAptSources(root string) error {
	paths := []string{filepath.Join(root, "etc/apt/sources.list")}
	d := filepath.Join(root, "etc/apt/sources.list.d")
	entries, err := os.ReadDir(d)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read /etc/apt/sources.list.d: %w", err)
	}
	for _, e := range entries {
		paths = append(paths, filepath.Join(d, e.Name()))
	}
	for _, p := range paths {
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("clean apt sources: %w", err)
		}
		if fi.IsDir() && p != paths[0] {
			continue
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("clean apt sources: /%s is not a regular file", rel)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("clean apt sources: %w", err)
		}
		if clean := stripUserinfo(string(b)); clean != string(b) {
			if err := os.WriteFile(p, []byte(clean), fi.Mode().Perm()); err != nil {
				return fmt.Errorf("clean apt sources: %w", err)
			}
		}
	}
	return nil
}
