package wsdiff

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/format/gitignore"
	gitindex "github.com/go-git/go-git/v5/plumbing/format/index"
	"golang.org/x/sys/unix"
)

type inodeKey struct{ dev, ino uint64 }

// walker holds the state of one tree's walk.
type walker struct {
	opt    Options
	t      *Tree
	frozen bool                  // ignore rules come from the base tree
	forced map[string]bool       // folders the base tree summarised
	ignore map[string]IgnoreFile // the base tree's ignore files by folder ("\x00" for exclude)
	pats   []gitignore.Pattern   // patterns in force, outermost first
	links  map[inodeKey]uint64   // links seen in the tree of inodes with nlink > 1
	extra  []string              // risky paths named by the baseline .git/config
	// tracked holds the folders with files in the baseline's git index
	// (Baseline) or the base tree's Tracked: never summarised as ignored.
	tracked map[string]bool
}

// maxDepth caps how deep the walk goes: a deeper folder is reported as
// unread, not walked (no unbounded recursion on a guest-made tree).
const maxDepth = 256

func (w *walker) unread(rel, why string) {
	if rel == "" {
		rel = "."
	}
	w.t.Unread = append(w.t.Unread, Unread{Path: rel, Why: why})
}

// risky reports whether a file at rel is on the table or under a path the
// baseline .git/config names.
func (w *walker) risky(rel string) bool {
	return RiskyPath(rel) != "" || underExtra(w.extra, rel)
}

// openDirAt opens a folder below a walked one; tests replace it to fail
// as an unreadable folder or fd exhaustion would.
var openDirAt = unix.Openat

const openDir = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC

// openRoot opens the workspace root without following a symlink the guest
// may have made: the root itself is opened with O_NOFOLLOW and, when it
// lies inside another root of the snapshot (nested workspaces, whose outer
// one the guest writes), every folder below that outer root is opened
// with O_NOFOLLOW too. On failure it returns why, in words for the row
// Compare reports.
func openRoot(root string, roots []string) (int, string) {
	outer := ""
	for _, o := range roots {
		if o != root && len(o) > len(outer) && strings.HasPrefix(root, strings.TrimSuffix(o, "/")+"/") {
			outer = o
		}
	}
	if outer == "" {
		fd, err := unix.Open(root, openDir, 0)
		if err != nil {
			var st unix.Stat_t
			lerr := unix.Lstat(root, &st)
			return -1, rootWhy(err, lerr, &st, "")
		}
		return fd, ""
	}
	cur, why := openRoot(outer, roots)
	if cur < 0 {
		return -1, "the workspace " + QuotePath(outer) + " it lies in cannot be opened: " + why
	}
	rel := strings.TrimPrefix(root, strings.TrimSuffix(outer, "/")+"/")
	parts := strings.Split(rel, "/")
	for i, p := range parts {
		next, err := unix.Openat(cur, p, openDir, 0)
		if err != nil {
			var st unix.Stat_t
			lerr := unix.Fstatat(cur, p, &st, unix.AT_SYMLINK_NOFOLLOW)
			unix.Close(cur)
			above := ""
			if i < len(parts)-1 {
				above = path.Join(outer, strings.Join(parts[:i+1], "/"))
			}
			return -1, rootWhy(err, lerr, &st, above)
		}
		unix.Close(cur)
		cur = next
	}
	return cur, ""
}

// rootWhy words the failure err to open a workspace root; lerr and st are
// an lstat of the name that failed, above that name when it is a folder
// above the root rather than the root.
func rootWhy(err, lerr error, st *unix.Stat_t, above string) string {
	what := "workspace root"
	if above != "" {
		what = "folder " + QuotePath(above) + " above the workspace root"
	}
	switch {
	case lerr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return what + " is now a symbolic link"
	case errors.Is(err, unix.ENOENT):
		return what + " is gone"
	case lerr == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return what + " is not a folder any more (" + kindOf(st.Mode).String() + ")"
	}
	return what + " cannot be read: " + errText(err)
}

// rootUnread reports whether the tree's root could not be opened or
// listed: what is below it is unknown, not deleted.
func rootUnread(t *Tree) bool {
	for _, u := range t.Unread {
		if u.Path == "." {
			return true
		}
	}
	return false
}

func takeTree(root string, fd int, opt Options) (*Tree, error) {
	w := &walker{opt: opt, t: &Tree{Root: root}, links: map[inodeKey]uint64{}}
	if bt := opt.Base.Tree(root); bt != nil {
		w.frozen = true
		w.forced = map[string]bool{}
		for _, s := range bt.Summaries {
			w.forced[s.Dir] = true
		}
		w.ignore = map[string]IgnoreFile{}
		w.t.Ignore = append(w.t.Ignore, bt.Ignore...)
		w.extra = append(w.extra, bt.Extra...)
		for _, d := range bt.Tracked {
			if w.tracked == nil {
				w.tracked = map[string]bool{}
			}
			w.tracked[d] = true
		}
		for _, f := range bt.Ignore {
			key := f.Dir
			if f.Exclude {
				key = "\x00"
			}
			w.ignore[key] = f
		}
	}
	if opt.Baseline {
		if data, err := readAt(fd, []string{".git", "config"}, 1<<20); err == nil {
			for _, x := range configPaths(root, data) {
				if !slices.Contains(w.extra, x) {
					w.extra = append(w.extra, x)
				}
			}
		}
	}
	w.t.Extra = w.extra
	if opt.Baseline {
		w.loadIndex(fd)
	}
	w.loadExclude(fd)
	w.walk(fd, "", nil, false, 0)
	// A file with more links than the tree holds is linked from outside.
	for i := range w.t.Entries {
		e := &w.t.Entries[i]
		if e.Kind == KindFile && e.Nlink > 1 && e.Nlink > w.links[inodeKey{e.Dev, e.Ino}] {
			e.LinkedOut = true
		}
	}
	slices.SortFunc(w.t.Entries, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	slices.SortFunc(w.t.Summaries, func(a, b Summary) int { return strings.Compare(a.Dir, b.Dir) })
	return w.t, nil
}

// loadExclude reads .git/info/exclude of the root (or the base's copy).
func (w *walker) loadExclude(rootFd int) {
	var data []byte
	if w.frozen {
		f, ok := w.ignore["\x00"]
		if !ok {
			return
		}
		data = f.Data
	} else {
		var err error
		data, err = readAt(rootFd, []string{".git", "info", "exclude"}, 1<<20)
		if err != nil {
			return
		}
		w.t.Ignore = append(w.t.Ignore, IgnoreFile{Exclude: true, Data: data})
	}
	w.pats = append(w.pats, parseIgnore(data, nil)...)
}

func parseIgnore(data []byte, domain []string) []gitignore.Pattern {
	var ps []gitignore.Pattern
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		ps = append(ps, gitignore.ParsePattern(line, domain))
	}
	return ps
}

// readAt reads the file at the path parts below fd without following
// symlinks, up to limit bytes.
func readAt(fd int, parts []string, limit int64) ([]byte, error) {
	cur := fd
	for i, p := range parts {
		flags := openDir
		if i == len(parts)-1 {
			flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
		}
		next, err := unix.Openat(cur, p, flags, 0)
		if cur != fd {
			unix.Close(cur)
		}
		if err != nil {
			return nil, err
		}
		cur = next
	}
	f := os.NewFile(uintptr(cur), parts[len(parts)-1])
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(cur, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, errors.New("not a regular file")
	}
	return io.ReadAll(io.LimitReader(f, limit))
}

func join(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

func kindOf(mode uint32) Kind {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return KindFile
	case unix.S_IFDIR:
		return KindDir
	case unix.S_IFLNK:
		return KindSymlink
	}
	return KindSpecial
}

func entryOf(path string, st *unix.Stat_t) Entry {
	return Entry{
		Path:  path,
		Kind:  kindOf(st.Mode),
		Mode:  st.Mode & 0o7777,
		Size:  st.Size,
		MTime: st.Mtim.Nano(),
		CTime: st.Ctim.Nano(),
		Dev:   uint64(st.Dev),
		Ino:   uint64(st.Ino),
		Nlink: uint64(st.Nlink),
	}
}

// walk lists the folder fd (rel, split as segs) and closes fd.
func (w *walker) walk(fd int, rel string, segs []string, inGit bool, depth int) {
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		w.unread(rel, "cannot list: "+errText(err))
		if len(names) == 0 {
			return
		}
	}
	slices.Sort(names)
	npats := len(w.pats)
	defer func() { w.pats = w.pats[:npats] }()
	if !inGit {
		w.loadGitignore(fd, rel, segs, names)
	}
	var st unix.Stat_t
	for _, name := range names {
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // gone meanwhile
		}
		p := join(rel, name)
		e := entryOf(p, &st)
		switch e.Kind {
		case KindSymlink:
			e.Target = readlinkAt(fd, name)
		case KindFile:
			if e.Nlink > 1 {
				w.links[inodeKey{e.Dev, e.Ino}]++
			}
			if w.risky(p) {
				w.hash(fd, name, &e)
			}
		case KindDir:
			childSegs := append(segs[:len(segs):len(segs)], name)
			childInGit := inGit || name == ".git"
			reason := ""
			if inGit && name == "objects" {
				reason = "git objects"
			} else if !childInGit && (w.forced[p] || w.ignored(childSegs)) && !anchoredUnder(childSegs) && !nearExtra(w.extra, p) {
				if w.tracked[p] {
					w.t.Tracked = append(w.t.Tracked, p)
				} else {
					reason = "ignored"
				}
			}
			if depth+1 >= maxDepth {
				if reason == "" {
					w.t.Entries = append(w.t.Entries, e)
				}
				w.unread(p, "too deep: more than "+itoa(maxDepth)+" folders")
				continue
			}
			cfd, err := openDirAt(fd, name, openDir, 0)
			if err != nil {
				w.unread(p, "cannot open: "+errText(err))
			}
			if reason != "" {
				s := Summary{Dir: p, Reason: reason}
				if err == nil {
					w.summarise(cfd, p, &s, reason == "ignored", depth+1)
				}
				w.t.Summaries = append(w.t.Summaries, s)
				continue
			}
			w.t.Entries = append(w.t.Entries, e)
			if err == nil {
				w.walk(cfd, p, childSegs, childInGit, depth+1)
			}
			continue
		}
		w.t.Entries = append(w.t.Entries, e)
	}
}

func (w *walker) ignored(segs []string) bool {
	if len(w.pats) == 0 {
		return false
	}
	return gitignore.NewMatcher(w.pats).Match(segs, true)
}

// loadGitignore adds the patterns of rel's .gitignore (or the base's copy).
func (w *walker) loadGitignore(fd int, rel string, segs []string, names []string) {
	var data []byte
	if w.frozen {
		f, ok := w.ignore[rel]
		if !ok {
			return
		}
		data = f.Data
	} else {
		if _, ok := slices.BinarySearch(names, ".gitignore"); !ok {
			return
		}
		var err error
		data, err = readAt(fd, []string{".gitignore"}, 1<<20)
		if err != nil {
			return
		}
		w.t.Ignore = append(w.t.Ignore, IgnoreFile{Dir: rel, Data: data})
	}
	w.pats = append(w.pats, parseIgnore(data, segs)...)
}

func readlinkAt(fd int, name string) string {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(fd, name, buf)
		if err != nil {
			return ""
		}
		if n < len(buf) {
			return string(buf[:n])
		}
		if len(buf) >= 1<<16 {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// hash takes the sha256 of a flagged file (and keeps a copy if asked),
// checking that what it opened is the file it stat'ed.
func (w *walker) hash(dirfd int, name string, e *Entry) {
	if e.Size > w.opt.MaxHashBytes {
		return
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || uint64(st.Ino) != e.Ino || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	data, err := io.ReadAll(io.LimitReader(f, w.opt.MaxHashBytes+1))
	if err != nil || int64(len(data)) > w.opt.MaxHashBytes {
		return
	}
	e.Hash = sha256.Sum256(data)
	e.Hashed = true
	if w.opt.FilesDir != "" && int64(len(data)) <= w.opt.MaxCopyBytes {
		e.Copied = keepCopy(w.opt.FilesDir, e.Hash, data)
	}
}

// summarise counts the folder fd (rel) into s and closes fd. In ignored
// folders, files on the table (a nested Makefile, package.json, .git/hooks
// file...) are listed as entries, not counted.
func (w *walker) summarise(fd int, rel string, s *Summary, listRisky bool, depth int) {
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		w.unread(rel, "cannot list: "+errText(err))
	}
	var st unix.Stat_t
	h := fnv.New64a()
	for _, name := range names {
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		p := join(rel, name)
		e := entryOf(p, &st)
		if listRisky && e.Kind != KindDir && w.risky(p) {
			if e.Kind == KindFile && e.Nlink > 1 {
				w.links[inodeKey{e.Dev, e.Ino}]++
			}
			if e.Kind == KindSymlink {
				e.Target = readlinkAt(fd, name)
			}
			w.t.Entries = append(w.t.Entries, e)
			continue
		}
		h.Reset()
		io.WriteString(h, p)
		var b [8 * 5]byte
		putU64(b[0:], uint64(e.Size))
		putU64(b[8:], uint64(e.MTime))
		putU64(b[16:], uint64(e.CTime))
		putU64(b[24:], uint64(e.Mode)|uint64(e.Kind)<<32)
		putU64(b[32:], e.Ino)
		h.Write(b[:])
		s.Sum += h.Sum64()
		if e.Kind == KindDir {
			s.Dirs++
			if depth+1 >= maxDepth {
				w.unread(p, "too deep: more than "+itoa(maxDepth)+" folders")
				continue
			}
			cfd, err := openDirAt(fd, name, openDir, 0)
			if err != nil {
				w.unread(p, "cannot open: "+errText(err))
				continue
			}
			w.summarise(cfd, p, s, listRisky, depth+1)
			continue
		}
		s.Files++
		s.Bytes += e.Size
		if e.Kind == KindFile && e.Nlink > 1 {
			w.links[inodeKey{e.Dev, e.Ino}]++
		}
	}
}

func putU64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		err = se.Err
	}
	return err.Error()
}

// maxIndexBytes caps the git index read for tracked folders.
const maxIndexBytes = 128 << 20

// loadIndex adds the folders of the files in the root's git index (as the
// baseline sees it) to w.tracked: an ignored folder that holds tracked
// files is listed, not summarised. A malformed index adds nothing.
func (w *walker) loadIndex(rootFd int) {
	data, err := readAt(rootFd, []string{".git", "index"}, maxIndexBytes+1)
	if err != nil || len(data) > maxIndexBytes {
		return
	}
	idx := &gitindex.Index{}
	func() {
		defer func() { recover() }()
		if gitindex.NewDecoder(bytes.NewReader(data)).Decode(idx) != nil {
			idx.Entries = nil
		}
	}()
	if len(idx.Entries) > 0 && w.tracked == nil {
		w.tracked = map[string]bool{}
	}
	for _, e := range idx.Entries {
		for d := path.Dir(e.Name); d != "." && d != "/" && !w.tracked[d]; d = path.Dir(d) {
			w.tracked[d] = true
		}
	}
}

// openRealRoot opens the workspace root for reading only while it is its
// own real path (no symbolic link on the way): one the guest turned into
// a link since the snapshot is not followed by `sbx diff --patch` or the
// git storage.
func openRealRoot(root string) (*os.Root, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	if got, err := os.Readlink(p); err != nil || got != filepath.Clean(root) {
		return nil, fmt.Errorf("workspace root %s leads to %q through a symbolic link", root, got)
	}
	return os.OpenRoot(p)
}
