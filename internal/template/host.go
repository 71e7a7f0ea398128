package template

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// HostRelease is the Debian suite and mirror the host's apt uses; the
// default template is built from the same ones.
type HostRelease struct {
	Suite  string // VERSION_CODENAME from os-release, e.g. "bookworm"
	Mirror string // first "deb" URI in the apt sources, e.g. "http://.../debian"
}

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
