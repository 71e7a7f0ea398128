package lifecycle

import (
	"errors"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/internal/template"
)

func TestRegistryReason(t *testing.T) {
	for _, tc := range []struct {
		re   template.RegistryError
		want string
	}{
		{template.RegistryError{Registry: "r:1", Err: errors.New(`Get "https://r:1/v2/": dial tcp r:1: connect: connection refused`)}, "registry r:1 could not be reached: connection refused"},
		{template.RegistryError{Registry: "r:1", Status: 401, Err: errors.New("x")}, "registry r:1 refused access (401)"},
		{template.RegistryError{Registry: "r:1", Status: 404, Err: errors.New("x")}, "registry r:1 has no such image"},
		{template.RegistryError{Registry: "r:1", Status: 500, Err: errors.New("x")}, "registry r:1 answered 500"},
	} {
		if got := registryReason(&tc.re); got != tc.want {
			t.Errorf("registryReason(%v) = %q, want %q", tc.re.Err, got, tc.want)
		}
	}
}

// template load replaces a template of the same name only when it came
// from the same file, or with --force.
func TestLoadReplace(t *testing.T) {
	abs := "/data/img.tar"
	for _, tc := range []struct {
		source string
		force  bool
		ok     bool
	}{
		{"file /data/img.tar@sha256:" + strings.Repeat("a", 64), false, true},
		{"file /data/img.tar.old@sha256:" + strings.Repeat("a", 64), false, false},
		{"file /other/img.tar@sha256:" + strings.Repeat("a", 64), false, false},
		{"sandbox sb (shell)", false, false},
		{"image 127.0.0.1:5000/a:1@sha256:" + strings.Repeat("a", 64), false, false},
		{"sandbox sb (shell)", true, true},
	} {
		err := loadReplace("img.tar", abs, tc.force)(template.Template{Name: "mine", Source: tc.source})
		if (err == nil) != tc.ok {
			t.Errorf("replace %q (force %v): %v, want ok %v", tc.source, tc.force, err, tc.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "template mine exists") || !strings.Contains(err.Error()+hintOf(err), "--force")) {
			t.Errorf("refusal does not say how to go on: %v (%s)", err, hintOf(err))
		}
	}
}

func hintOf(err error) string {
	if le, ok := AsError(err); ok {
		return le.Hint
	}
	return ""
}
