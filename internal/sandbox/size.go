package sandbox

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a size such as 512m, 2g, 2GiB, 20G or 1048576 (bytes).
// Units are binary (k = 1024). defaultUnit applies to a bare number and is
// one of "", "k", "m", "g" ("" means bytes).
func ParseSize(s, defaultUnit string) (int64, error) {
	orig := s
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return 0, fmt.Errorf("invalid size %q: empty", orig)
	}
	s = strings.TrimSuffix(strings.TrimSuffix(s, "ib"), "b")
	i := len(s)
	for i > 0 && (s[i-1] < '0' || s[i-1] > '9') {
		i--
	}
	num, unit := s[:i], s[i:]
	if unit == "" {
		unit = defaultUnit
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid size %q: want a positive number with an optional unit k, m, g or t (e.g. 2g)", orig)
	}
	var shift uint
	switch unit {
	case "":
	case "k":
		shift = 10
	case "m":
		shift = 20
	case "g":
		shift = 30
	case "t":
		shift = 40
	default:
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use k, m, g or t)", orig, unit)
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", orig)
	}
	return n << shift, nil
}

// FormatSize renders bytes for people: 20GiB, 512MiB, 1.5GiB.
func FormatSize(b int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f := float64(b)
	u := 0
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d%s", int64(f), units[u])
	}
	return fmt.Sprintf("%.1f%s", f, units[u])
}
