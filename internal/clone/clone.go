// Package clone is the clone mode of a sandbox: nothing of the host
// repository's folder is shared with the guest; the host's git writes a
// bundle of its HEAD, branches and tags, which is copied in, and the agent
// works in a clone of it on the VM's own disk, at the repository's host
// path, so it runs at disk speed and never sees the host's work tree
// (.env, untracked files) or .git (hooks, config).
//
// The host brings the agent's commits home with git itself: a remote
// sandbox-NAME whose URL is sbx::NAME makes git run the remote helper
// git-remote-sbx (the sbx binary under that name), which connects git's
// fetch to `git upload-pack` in the guest through the sandbox's own
// channel (no network port); fetched branches land in
// refs/sandboxes/NAME/*, and stay there after the sandbox is removed.
// New host commits reach the clone with `sbx fetch-into`, which copies a
// new bundle in and fetches from it.
//
// Host-side git runs only read commands on the user's own repository,
// with hooks, fsmonitor and pagers off; the guest's git never runs on the
// host.
package clone

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

// GuestInbox is the guest folder the host's bundles (and untracked files)
// are copied into: the host repository itself is not shared with the
// guest, so it sees no work tree (.env, untracked files) and no .git
// (config with tokens, hooks), only the commits of a bundle.
const GuestInbox = "/run/sbx/clone-in"

// GuestBundle is the bundle of the host repository's branches and tags
// in the guest, the clone's remote sbx-host.
const GuestBundle = GuestInbox + "/repo.bundle"

// GuestSource is where the host repository was mounted, read-only, in
// the guest, by sandboxes made before bundles (their config says so).
const GuestSource = "/run/sbx/source"

// SourceRemote is the clone's remote for the host repository (the bundle
// in the guest's inbox).
const SourceRemote = "sbx-host"

// Errors Check returns; each message says what to do.
var (
	ErrNotGit     = errors.New("not a git repository")
	ErrNotTop     = errors.New("not the top folder of a git work tree")
	ErrBare       = errors.New("a bare repository")
	ErrWorktree   = errors.New("a linked worktree")
	ErrDirtyIndex = errors.New("the index has staged changes")
	ErrNoCommit   = errors.New("the repository has no commit yet")
)

// Remote is one remote of the host repository.
type Remote struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// Source is a host repository checked for clone mode.
type Source struct {
	// Root is the work tree's top folder (a real path).
	Root string `json:"root"`
	// Remotes are its forge remotes (not local paths), copied into the
	// clone.
	Remotes []Remote `json:"remotes,omitempty"`
}

// git runs a read-only git command on the user's repository: no hooks,
// no fsmonitor, no pager, no prompts, whoever owns it.
func git(ctx context.Context, dir string, args ...string) (string, error) {
	return gitEnv(ctx, dir, nil, args...)
}

// MaxGitOutput caps what sbx reads of one git command's output: some
// run on objects a guest made (sbx diff of a clone), where a pack of a
// megabyte can hold a blob of gigabytes. Past it, git is stopped and the
// call fails with ErrGitOutput.
var MaxGitOutput = 64 << 20

// ErrGitOutput is a git command's output past MaxGitOutput.
var ErrGitOutput = errors.New("git printed more than sbx reads")

// limited is a buffer that stops its command (cancel) past max bytes. It
// holds its bytes.Buffer in a field: embedded, the buffer's ReadFrom
// would let io.Copy go around Write.
type limited struct {
	buf    bytes.Buffer
	max    int
	over   bool
	cancel func()
}

func (l *limited) Write(p []byte) (int, error) {
	if l.buf.Len()+len(p) > l.max {
		l.over = true
		l.cancel()
		return 0, ErrGitOutput
	}
	return l.buf.Write(p)
}

func (l *limited) String() string { return l.buf.String() }

// gitEnv is git with env added to the environment.
func gitEnv(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	full := append([]string{"-c", "safe.directory=*", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
		"--no-pager", "-C", dir}, args...)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", full...)
	cmd.Env = append(append(cmd.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_OPTIONAL_LOCKS=0"), env...)
	out := &limited{max: MaxGitOutput, cancel: cancel}
	errb := &limited{max: 64 << 10, cancel: func() {}}
	cmd.Stdout, cmd.Stderr = out, errb
	err := cmd.Run()
	if out.over {
		return "", fmt.Errorf("git %s: %w (%d MiB)", strings.Join(args, " "), ErrGitOutput, MaxGitOutput>>20)
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.String(), fmt.Errorf("git %s: exit %d: %s", strings.Join(args, " "), ee.ExitCode(), strings.TrimSpace(errb.String()))
		}
		return "", fmt.Errorf("git: %w (is git installed?)", err)
	}
	return out.String(), nil
}

// Check says whether dir can be a clone mode workspace: the top folder of
// a work tree (not bare, not a linked worktree) with at least one commit
// and nothing staged; it returns its real path and forge remotes.
func Check(ctx context.Context, dir string) (Source, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return Source{}, err
	}
	if out, err := git(ctx, real, "rev-parse", "--is-bare-repository"); err != nil {
		return Source{}, fmt.Errorf("%s: %w", real, ErrNotGit)
	} else if strings.TrimSpace(out) == "true" {
		return Source{}, fmt.Errorf("%s: %w", real, ErrBare)
	}
	out, err := git(ctx, real, "rev-parse", "--is-bare-repository", "--is-inside-work-tree", "--git-dir", "--git-common-dir", "--show-toplevel")
	if err != nil {
		return Source{}, fmt.Errorf("%s: %w", real, ErrNotGit)
	}
	f := strings.Split(strings.TrimSpace(out), "\n")
	if len(f) < 5 || f[1] != "true" {
		return Source{}, fmt.Errorf("%s: %w", real, ErrNotGit)
	}
	abs := func(p string) string {
		if !filepath.IsAbs(p) {
			p = filepath.Join(real, p)
		}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
		return filepath.Clean(p)
	}
	if abs(f[2]) != abs(f[3]) {
		return Source{}, fmt.Errorf("%s: %w", real, ErrWorktree)
	}
	if top := abs(f[4]); top != real {
		return Source{}, fmt.Errorf("%s: %w (the top is %s)", real, ErrNotTop, top)
	}
	if _, err := git(ctx, real, "rev-parse", "--verify", "-q", "HEAD"); err != nil {
		return Source{}, fmt.Errorf("%s: %w", real, ErrNoCommit)
	}
	if _, err := git(ctx, real, "diff", "--cached", "--quiet", "--no-ext-diff"); err != nil {
		return Source{}, fmt.Errorf("%s: %w", real, ErrDirtyIndex)
	}
	s := Source{Root: real}
	cfg, _ := git(ctx, real, "config", "--get-regexp", `^remote\..*\.url$`)
	for l := range strings.Lines(cfg) {
		k, v, ok := strings.Cut(strings.TrimSpace(l), " ")
		if !ok {
			continue
		}
		name := strings.TrimSuffix(strings.TrimPrefix(k, "remote."), ".url")
		if !ForgeURL(v) || !validRemoteName(name) {
			continue
		}
		// A token in the URL stays on the host: the proxy brings the
		// forge's credentials.
		if u, ok := WithoutCredentials(v); ok {
			s.Remotes = append(s.Remotes, Remote{Name: name, URL: u})
		}
	}
	return s, nil
}

var remoteName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func validRemoteName(n string) bool { return remoteName.MatchString(n) && n != SourceRemote }

// scpLike is git's user@host:path form.
var scpLike = regexp.MustCompile(`^[A-Za-z0-9._~-]+(@[A-Za-z0-9._~-]+)?:[^/]`)

// ForgeURL reports whether a remote URL names another machine (https,
// ssh, git, or scp-like user@host:path), not a local path or file://.
func ForgeURL(u string) bool {
	if strings.Contains(u, "::") {
		return false // <transport>::<address>: ext::, fd:: and helpers
	}
	if i := strings.Index(u, "://"); i > 0 {
		switch strings.ToLower(u[:i]) {
		case "https", "http", "ssh", "git", "git+ssh", "ssh+git":
			return true
		}
		return false
	}
	return !strings.HasPrefix(u, "/") && !strings.HasPrefix(u, ".") && scpLike.MatchString(u)
}

// WithoutCredentials returns forge URL u without what could be a secret in
// it: any user information of an http(s) URL (https://TOKEN@host/,
// https://user:TOKEN@host/), the password of any other; false when u
// cannot be read, and then it is not copied at all.
func WithoutCredentials(u string) (string, bool) {
	if !strings.Contains(u, "://") {
		// scp-like [user@]host:path: a user name only; a colon before
		// the first "@" may be a password (or a path with an "@" in it;
		// either way it is not copied).
		if at := strings.Index(u, "@"); at >= 0 && strings.Contains(u[:at], ":") {
			return "", false
		}
		return u, true
	}
	p, err := url.Parse(u)
	if err != nil {
		return "", false
	}
	if p.User == nil && p.RawQuery == "" && !p.ForceQuery && p.Fragment == "" && p.RawFragment == "" {
		return u, true
	}
	// A token may also ride in the query (?access_token=) or the
	// fragment; git sends neither as part of a repository's address
	// that a forge needs, so neither is copied.
	p.RawQuery, p.ForceQuery, p.Fragment, p.RawFragment = "", false, "", ""
	if p.User != nil {
		switch strings.ToLower(p.Scheme) {
		case "http", "https":
			p.User = nil
		default:
			p.User = url.User(p.User.Username())
		}
	}
	return p.String(), true
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// PrepareScript is the guest shell script, run as root, that makes dest
// an empty folder of the agent user (what a failed clone left is
// removed first).
func PrepareScript(dest, user string) string {
	return fmt.Sprintf("set -e\nrm -rf %[1]s\nmkdir -p %[1]s\nchown %[2]s:%[2]s %[1]s\n", shellQuote(dest), shellQuote(user))
}

// InboxScript is the guest shell script, run as root, that makes the
// inbox the host copies a bundle (and untracked files) into, empty.
func InboxScript() string {
	return fmt.Sprintf("set -e\nrm -rf %[1]s\nmkdir -p %[1]s\nchmod 0755 %[1]s\n", shellQuote(GuestInbox))
}

// ReadableScript is the guest shell script, run as root, that lets the
// agent user read what the host copied into the inbox.
func ReadableScript() string {
	return fmt.Sprintf("set -e\nchmod -R a+rX %s\n", shellQuote(GuestInbox))
}

// Script is the guest shell script, run as the agent user, that makes the
// clone at dest from the bundle the host copied in: committed history
// only, the bundle as remote sbx-host, and the host's forge remotes.
func Script(dest string, s Source) string {
	return script(GuestBundle, dest, s)
}

func script(bundle, dest string, s Source) string {
	var b strings.Builder
	fmt.Fprintf(&b, "set -e\nsrc=%s\ndest=%s\n", shellQuote(bundle), shellQuote(dest))
	fmt.Fprintf(&b, "git clone -q --origin %s \"$src\" \"$dest\"\n", SourceRemote)
	for _, r := range s.Remotes {
		fmt.Fprintf(&b, "git -C \"$dest\" remote add %s %s\n", shellQuote(r.Name), shellQuote(r.URL))
	}
	return b.String()
}

// UntrackedScript is the guest shell script, run as root, that moves the
// untracked files the host copied into the inbox's "untracked" folder
// into the clone at dest, owned by user.
func UntrackedScript(dest, user string) string {
	return fmt.Sprintf("set -e\ncd %[1]s/untracked\ntar -cf - . | tar -C %[2]s -xf -\nchown -R %[3]s:%[3]s %[2]s\nrm -rf %[1]s/untracked\n",
		shellQuote(GuestInbox), shellQuote(dest), shellQuote(user))
}

// FetchScript is the guest shell script that fetches new host commits
// into the clone at dest from the bundle just copied in: ref, or every
// branch, into refs/remotes/sbx-host/.
func FetchScript(dest, ref string) string {
	args := ""
	if ref != "" {
		args = " " + shellQuote(ref)
	}
	return fmt.Sprintf("set -e\ngit -c safe.directory='*' -C %s fetch %s%s\n", shellQuote(dest), SourceRemote, args)
}

// Bundle writes to path a git bundle of repo's HEAD, branches and tags
// (not its other refs: refs/sandboxes/* hold other sandboxes' work), by
// the host's git, read-only on the repository.
func Bundle(ctx context.Context, repo, path string) error {
	_, err := git(ctx, repo, "bundle", "create", "-q", path, "HEAD", "--branches", "--tags")
	return err
}

// Untracked stages into dir copies of repo's untracked files that git
// does not ignore (regular files and symlinks, as they are; nothing is
// followed), at their paths, for a --clone-untracked clone.
func Untracked(ctx context.Context, repo, dir string) (int, error) {
	out, err := git(ctx, repo, "ls-files", "-z", "--others", "--exclude-standard")
	if err != nil {
		return 0, err
	}
	root, err := os.OpenRoot(repo)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	n := 0
	for _, rel := range strings.Split(out, "\x00") {
		if rel == "" || !filepath.IsLocal(rel) {
			continue
		}
		fi, err := root.Lstat(rel)
		if err != nil {
			continue
		}
		dst := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return n, err
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := root.Readlink(rel)
			if err != nil {
				continue
			}
			if err := os.Symlink(target, dst); err != nil {
				return n, err
			}
		case fi.Mode().IsRegular():
			if err := copyFile(root, rel, dst, fi.Mode().Perm()); err != nil {
				return n, err
			}
		default:
			continue
		}
		n++
	}
	return n, nil
}

func copyFile(root *os.Root, rel, dst string, mode os.FileMode) error {
	in, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode&0o777)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// HostRemote is the name of the host repository's remote for sandbox name.
func HostRemote(name string) string { return "sandbox-" + name }

// AddHostRemote adds (or sets again) the remote sandbox-NAME to the host
// repository: URL sbx::NAME, fetching branches into refs/sandboxes/NAME/
// and no tags.
func AddHostRemote(ctx context.Context, repo, name string) error {
	r := "remote." + HostRemote(name)
	if _, err := git(ctx, repo, "config", r+".url", "sbx::"+name); err != nil {
		return err
	}
	if _, err := git(ctx, repo, "config", "--replace-all", r+".fetch", "+refs/heads/*:refs/sandboxes/"+name+"/*"); err != nil {
		return err
	}
	// No tags: git would otherwise follow the guest's tags into the
	// host's refs/tags (a tag "main" shadows the branch main).
	_, err := git(ctx, repo, "config", r+".tagOpt", "--no-tags")
	return err
}

// RemoveHostRemote removes the remote of sandbox name from the host
// repository; the refs it fetched stay.
func RemoveHostRemote(ctx context.Context, repo, name string) error {
	_, err := git(ctx, repo, "config", "--remove-section", "remote."+HostRemote(name))
	if err != nil && strings.Contains(err.Error(), "no such section") {
		return nil
	}
	return err
}

// ErrPushRefused is what the helper says to a push.
var ErrPushRefused = errors.New("pushing into a sandbox is not supported: bring host commits in with `sbx fetch-into`")

// ServeHelper speaks git's remote helper protocol on in and out with the
// "connect" capability: git asks to connect to git-upload-pack, and
// connect joins the rest of in and out to that service in the sandbox.
func ServeHelper(in io.Reader, out io.Writer, connect func(service string, stdin io.Reader, stdout io.Writer) error) error {
	br := bufio.NewReader(in)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && line == "" {
				return nil
			}
			return err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "capabilities":
			if _, err := io.WriteString(out, "connect\n\n"); err != nil {
				return err
			}
		case strings.HasPrefix(line, "connect "):
			service := strings.TrimPrefix(line, "connect ")
			if service != "git-upload-pack" {
				return ErrPushRefused
			}
			if _, err := io.WriteString(out, "\n"); err != nil {
				return err
			}
			return connect(service, br, out)
		case line == "":
			return nil
		default:
			return fmt.Errorf("git remote helper: unsupported command %q", line)
		}
	}
}
