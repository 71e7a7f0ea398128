package clone

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sbx-dev/sbx/internal/wsdiff"
)

// What a clone mode sandbox changed comes in two parts (`sbx diff`):
//
//   - Committed: the clone's branches, fetched by the host's own git
//     through the remote helper (as `git fetch sandbox-NAME` does) into a
//     throwaway repository that borrows the host repository's objects,
//     and compared there by the host's git with the host branch each
//     forked from. This is what a fetch would bring home, read by a git
//     the guest cannot touch.
//   - Uncommitted: the clone's index and work tree against its HEAD, and
//     its untracked files, as `git status` in the guest reports them. The
//     guest's word: it never reaches the host unless committed and
//     fetched, when it shows as committed.

// Branch is one branch of a clone with commits its host branch lacks.
type Branch struct {
	Name string
	// Base is the fork point: the merge base of Tip with the host branch
	// of the same name, else with the host's HEAD; the empty tree when
	// they share no history.
	Base, Tip string
	Entries   []wsdiff.GitEntry
}

// Fetched is a clone's branches fetched into a throwaway repository.
type Fetched struct {
	dir      string
	Branches []Branch
}

// Close removes the throwaway repository.
func (f *Fetched) Close() error { return os.RemoveAll(f.dir) }

// FetchBranches fetches the branches of sandbox name's clone into a
// throwaway repository borrowing repo's objects (nothing is written to
// repo), through the remote helper helper (the sbx binary; git runs it as
// git-remote-sbx), and lists what each branch changed since its fork
// point. Close the result.
func FetchBranches(ctx context.Context, repo, name, helper string) (*Fetched, error) {
	common, err := git(ctx, repo, "rev-parse", "--path-format=absolute", "--git-common-dir")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sbx-clonediff-")
	if err != nil {
		return nil, err
	}
	f := &Fetched{dir: dir}
	fail := func(err error) (*Fetched, error) {
		f.Close()
		return nil, err
	}
	tmp := filepath.Join(dir, "repo.git")
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o700); err != nil {
		return fail(err)
	}
	if err := os.Symlink(helper, filepath.Join(bin, "git-remote-sbx")); err != nil {
		return fail(err)
	}
	if _, err := git(ctx, dir, "init", "-q", "--bare", tmp); err != nil {
		return fail(err)
	}
	alt := filepath.Join(strings.TrimSpace(common), "objects") + "\n"
	if err := os.WriteFile(filepath.Join(tmp, "objects", "info", "alternates"), []byte(alt), 0o600); err != nil {
		return fail(err)
	}
	env := []string{"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH")}
	// The guest answers the fetch: it may never finish.
	fctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	if _, err := gitEnv(fctx, tmp, env, "fetch", "-q", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
		"sbx::"+name, "+refs/heads/*:refs/heads/*"); err != nil {
		if fctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			err = fmt.Errorf("the fetch from the sandbox did not finish within %s", FetchTimeout)
		}
		return fail(err)
	}
	out, err := git(ctx, tmp, "for-each-ref", "--format=%(objectname) %(refname:lstrip=2)", "refs/heads/")
	if err != nil {
		return fail(err)
	}
	hostHead, _ := git(ctx, repo, "rev-parse", "-q", "--verify", "HEAD^{commit}")
	hostHead = strings.TrimSpace(hostHead)
	empty, err := git(ctx, tmp, "hash-object", "-t", "tree", "/dev/null")
	if err != nil {
		return fail(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		tip, branch, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		against := hostHead
		if id, err := git(ctx, repo, "rev-parse", "-q", "--verify", "refs/heads/"+branch+"^{commit}"); err == nil {
			against = strings.TrimSpace(id)
		}
		base := strings.TrimSpace(empty)
		if against != "" {
			if mb, err := git(ctx, tmp, "merge-base", tip, against); err == nil {
				base = strings.TrimSpace(mb)
			}
		}
		if base == tip {
			continue
		}
		raw, err := git(ctx, tmp, "diff-tree", "-r", "-z", "--raw", "--no-renames", "--no-ext-diff", base, tip)
		if err != nil {
			return fail(err)
		}
		entries, err := ParseRaw([]byte(raw))
		if err != nil {
			return fail(err)
		}
		for i := range entries {
			e := &entries[i]
			if e.OldMode == wsdiff.GitSymlink {
				e.OldTarget = f.blob(ctx, tmp, e.OldID)
			}
			if e.NewMode == wsdiff.GitSymlink {
				e.Target = f.blob(ctx, tmp, e.NewID)
			}
		}
		f.Branches = append(f.Branches, Branch{Name: branch, Base: base, Tip: tip, Entries: entries})
	}
	return f, nil
}

// maxTarget caps a symlink target read from a blob: a larger blob is not
// read at all (the guest made it).
const maxTarget = 4096

// FetchTimeout bounds the fetch of a clone's branches.
const FetchTimeout = 10 * time.Minute

func (f *Fetched) blob(ctx context.Context, repo, id string) string {
	size, err := git(ctx, repo, "cat-file", "-s", id)
	if n, perr := strconv.Atoi(strings.TrimSpace(size)); err != nil || perr != nil || n > maxTarget {
		return ""
	}
	out, err := git(ctx, repo, "cat-file", "blob", id)
	if err != nil {
		return ""
	}
	return out
}

// Patch is the unified diff of branch b from its fork point, by the
// host's git (no external diff or text conversion).
func (f *Fetched) Patch(ctx context.Context, b Branch) (string, error) {
	// Files over 1 MiB are diffed as binary: git would hold each whole.
	return git(ctx, filepath.Join(f.dir, "repo.git"), "-c", "core.bigFileThreshold=1m", "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", b.Base, b.Tip)
}

// ParseRaw parses `git diff-tree -r -z --raw --no-renames` output.
func ParseRaw(b []byte) ([]wsdiff.GitEntry, error) {
	var out []wsdiff.GitEntry
	fields := bytes.Split(b, []byte{0})
	for i := 0; i < len(fields); i++ {
		head := string(fields[i])
		if head == "" {
			continue
		}
		if !strings.HasPrefix(head, ":") || i+1 >= len(fields) {
			return nil, fmt.Errorf("git diff-tree: unexpected %q", head)
		}
		f := strings.Fields(head[1:])
		if len(f) != 5 {
			return nil, fmt.Errorf("git diff-tree: unexpected %q", head)
		}
		om, err1 := strconv.ParseUint(f[0], 8, 32)
		nm, err2 := strconv.ParseUint(f[1], 8, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("git diff-tree: unexpected modes in %q", head)
		}
		e := wsdiff.GitEntry{Path: string(fields[i+1]), OldMode: uint32(om), NewMode: uint32(nm), OldID: f[2], NewID: f[3]}
		if zeroID(e.OldID) {
			e.OldID = ""
		}
		if zeroID(e.NewID) {
			e.NewID = ""
		}
		out = append(out, e)
		i++
	}
	return out, nil
}

func zeroID(id string) bool { return strings.Trim(id, "0") == "" }

// StatusScript is the guest shell script (run as the agent user, its
// first argument the clone) that prints the clone's `git status
// --porcelain=v2 -z` with branch headers and every untracked file.
const StatusScript = `cd -- "$1" && exec git -c core.fsmonitor=false status --porcelain=v2 -z --branch --untracked-files=all --no-renames --ignore-submodules=none`

// StatScript is the guest bash script (run as the agent user, its first
// argument the clone) that reads NUL-terminated paths on stdin and prints
// for each its st_mode in hex and its symlink target, each NUL-terminated.
const StatScript = `cd -- "$1" || exit 1
while IFS= read -r -d '' p; do
  m=$(stat -c %f -- "$p" 2>/dev/null) || m=0
  t=$(readlink -n -- "$p" 2>/dev/null) || t=
  printf '%s\0%s\0' "$m" "$t"
done`

// Status is a clone's work tree state, as the guest reports it.
type Status struct {
	// Head is the commit checked out ("" before the first), Branch its
	// branch ("" when detached).
	Head, Branch string
	// Changed are the paths the index or the work tree changed from Head;
	// Untracked the files git does not track or ignore (kind and mode
	// unknown until Stat fills NewMode).
	Changed   []wsdiff.GitEntry
	Untracked []wsdiff.GitEntry
}

// ParseStatus parses StatusScript's output.
func ParseStatus(b []byte) (Status, error) {
	var st Status
	fields := bytes.Split(b, []byte{0})
	for i := 0; i < len(fields); i++ {
		rec := string(fields[i])
		if rec == "" {
			continue
		}
		bad := fmt.Errorf("git status: unexpected record %q", truncate(rec))
		switch rec[0] {
		case '#':
			k, v, _ := strings.Cut(strings.TrimPrefix(rec, "# "), " ")
			switch k {
			case "branch.oid":
				if v != "(initial)" {
					st.Head = v
				}
			case "branch.head":
				if v != "(detached)" {
					st.Branch = v
				}
			}
		case '1', '2':
			n := 9
			if rec[0] == '2' {
				n = 10
			}
			f := strings.SplitN(rec, " ", n)
			if len(f) != n {
				return st, bad
			}
			e, err := statusEntry(f[1], f[3], f[5], f[6], f[n-1])
			if err != nil {
				return st, bad
			}
			if rec[0] == '2' {
				i++ // the original path
			}
			st.Changed = append(st.Changed, e)
		case 'u':
			f := strings.SplitN(rec, " ", 11)
			if len(f) != 11 {
				return st, bad
			}
			e, err := statusEntry("MM", f[3], f[6], f[7], f[10])
			if err != nil {
				return st, bad
			}
			st.Changed = append(st.Changed, e)
		case '?':
			p := strings.TrimPrefix(rec, "? ")
			st.Untracked = append(st.Untracked, wsdiff.GitEntry{Path: strings.TrimSuffix(p, "/")})
		case '!':
		default:
			return st, bad
		}
	}
	return st, nil
}

// statusEntry is a tracked path's change from HEAD (modes mH, mW, id hH)
// to the work tree: its content changed when the index differs from
// HEAD or the work tree from the index (XY), which cannot tell a mode
// change from an edit.
func statusEntry(xy, mH, mW, hH, path string) (wsdiff.GitEntry, error) {
	om, err1 := strconv.ParseUint(mH, 8, 32)
	nm, err2 := strconv.ParseUint(mW, 8, 32)
	if err1 != nil || err2 != nil || len(xy) != 2 {
		return wsdiff.GitEntry{}, errors.New("bad modes")
	}
	e := wsdiff.GitEntry{Path: path, OldMode: uint32(om), NewMode: uint32(nm), OldID: hH, Changed: true}
	if zeroID(e.OldID) {
		e.OldID = ""
	}
	return e, nil
}

// StatPaths is StatScript's stdin for the entries that need a mode or a
// symlink target from the guest: untracked files, and changed symlinks.
func StatPaths(st Status) (paths []string, stdin []byte) {
	for _, e := range st.Untracked {
		paths = append(paths, e.Path)
	}
	for _, e := range st.Changed {
		if e.NewMode == wsdiff.GitSymlink {
			paths = append(paths, e.Path)
		}
	}
	var b bytes.Buffer
	for _, p := range paths {
		b.WriteString(p)
		b.WriteByte(0)
	}
	return paths, b.Bytes()
}

// ApplyStat fills st from StatScript's output for paths (StatPaths).
func ApplyStat(st *Status, paths []string, out []byte) error {
	fields := bytes.Split(out, []byte{0})
	if len(fields) < 2*len(paths) {
		return fmt.Errorf("the guest's stat gave %d fields for %d paths", len(fields), len(paths))
	}
	type info struct {
		mode   uint32
		target string
	}
	got := map[string]info{}
	for i, p := range paths {
		m, err := strconv.ParseUint(string(fields[2*i]), 16, 32)
		if err != nil {
			return fmt.Errorf("the guest's stat gave mode %q", truncate(string(fields[2*i])))
		}
		got[p] = info{uint32(m), string(fields[2*i+1])}
	}
	for i := range st.Untracked {
		e := &st.Untracked[i]
		in := got[e.Path]
		e.NewMode = in.mode
		if e.NewMode&^0o7777 == wsdiff.GitSymlink {
			e.NewMode, e.Target = wsdiff.GitSymlink, in.target
		}
		if e.NewMode == 0 {
			// Gone since status listed it, or unreadable: a file of
			// unknown mode.
			e.NewMode = wsdiff.GitFile
		}
	}
	for i := range st.Changed {
		e := &st.Changed[i]
		if e.NewMode == wsdiff.GitSymlink {
			e.Target = got[e.Path].target
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
