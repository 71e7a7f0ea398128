package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRender(t *testing.T) {
	for _, c := range []struct {
		err   error
		debug bool
		code  int
		out   string
	}{
		{nil, false, 0, ""},
		{&ExitError{Code: 42}, false, 42, ""},
		{userErr(errors.New("cause"), "do this", "it broke"), false, 1, "sbx: it broke\nhint: do this\n"},
		{userErr(errors.New("cause"), "", "it broke"), true, 1, "sbx: it broke\ncause: cause\n"},
		{&UserError{Msg: "not found", Code: 127}, false, 127, "sbx: not found\n"},
		{errors.Join(userErr(nil, "", "a"), userErr(nil, "", "b")), false, 1, "sbx: a\nsbx: b\n"},
		{errors.New("plain"), false, 1, "sbx: plain\n"},
	} {
		var buf bytes.Buffer
		code := Render(&buf, c.err, c.debug)
		if code != c.code || buf.String() != c.out {
			t.Errorf("Render(%v) = %d %q, want %d %q", c.err, code, buf.String(), c.code, c.out)
		}
	}
}

func TestParseEnv(t *testing.T) {
	t.Setenv("SBX_TEST_PASS", "v")
	got, err := parseEnv([]string{"A=1", "B=", "SBX_TEST_PASS", "SBX_TEST_UNSET_XYZ"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"A=1", "B=", "SBX_TEST_PASS=v"}, got); diff != "" {
		t.Error(diff)
	}
	for _, bad := range []string{"=x", "A B=1"} {
		if _, err := parseEnv([]string{bad}); err == nil || !strings.Contains(err.Error(), "bad environment variable") {
			t.Errorf("parseEnv(%q) = %v", bad, err)
		}
	}
}
