package wsdiff

import (
	"bytes"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/format/config"
)

// configPaths returns the workspace paths (slash-separated, relative to
// root) that the git config data (root's .git/config) makes git run or
// read: core.hooksPath (relative to the work tree) and include.path and
// includeIf.*.path (relative to .git). Paths outside the workspace, and
// ~ paths, are left out: the guest does not write them.
func configPaths(root string, data []byte) []string {
	cfg := config.New()
	if err := config.NewDecoder(bytes.NewReader(data)).Decode(cfg); err != nil {
		return nil
	}
	var out []string
	add := func(base, p string) {
		p = strings.TrimSpace(p)
		if p == "" || strings.HasPrefix(p, "~") || strings.HasPrefix(p, "%(prefix)") {
			return
		}
		var rel string
		if filepath.IsAbs(p) {
			r, err := filepath.Rel(root, filepath.Clean(p))
			if err != nil {
				return
			}
			rel = filepath.ToSlash(r)
		} else {
			rel = path.Clean(path.Join(base, filepath.ToSlash(p)))
		}
		if rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || strings.HasPrefix(rel, "/") {
			return
		}
		if !slices.Contains(out, rel) {
			out = append(out, rel)
		}
	}
	for _, s := range cfg.Sections {
		switch strings.ToLower(s.Name) {
		case "core":
			for _, p := range s.Options.GetAll("hooksPath") {
				add("", p)
			}
		case "include":
			for _, p := range s.Options.GetAll("path") {
				add(".git", p)
			}
		case "includeif":
			for _, ss := range s.Subsections {
				for _, p := range ss.Options.GetAll("path") {
					add(".git", p)
				}
			}
		}
	}
	return out
}

// underExtra reports whether rel is one of extra or below one.
func underExtra(extra []string, rel string) bool {
	for _, x := range extra {
		if rel == x || strings.HasPrefix(rel, x+"/") {
			return true
		}
	}
	return false
}

// nearExtra reports whether the folder rel is, holds or is below one of
// extra: such folders are never summarised.
func nearExtra(extra []string, rel string) bool {
	for _, x := range extra {
		if rel == x || strings.HasPrefix(rel, x+"/") || strings.HasPrefix(x, rel+"/") {
			return true
		}
	}
	return false
}
