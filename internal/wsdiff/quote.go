package wsdiff

import (
	"strconv"
	"unicode/utf8"
)

// QuotePath returns p as it is safe to print to a terminal: unchanged when
// every rune is printable and it holds no '"' or '\', else quoted like
// strconv.Quote (control characters, invalid UTF-8, bidirectional and
// other format characters escaped), as git's core.quotePath does for
// control characters. Paths and symlink targets the guest chose go through
// it wherever they are printed for people; JSON output stays JSON.
func QuotePath(p string) string {
	for i, r := range p {
		if r == utf8.RuneError {
			if _, n := utf8.DecodeRuneInString(p[i:]); n <= 1 {
				return strconv.Quote(p)
			}
		}
		if r == '"' || r == '\\' || !strconv.IsPrint(r) {
			return strconv.Quote(p)
		}
	}
	return p
}
