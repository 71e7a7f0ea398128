package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/api/agentapi"
)

// NinePOptions are the 9p mount options for workspaces. access=client
// (the 9p2000.L default, spelled out) attaches one fid per guest uid and
// checks permissions in the guest; QEMU (as root, security_model=none or
// passthrough) then creates each file with the creating guest uid and gid,
// so a file the agent user (uid U) creates is owned by U on the host.
// access=any would attach once and create everything as one uid.
const NinePOptions = "trans=virtio,version=9p2000.L,msize=524288,access=client"

// Guest applies setup requests and powers the machine off: the
// system-changing half of the agent, used by Init. It must run as root in
// the guest.
type Guest struct {
	log *slog.Logger
	etc string
	// reaper starts dockerd; set by Init.
	reaper *Reaper
	// dockerMods are Docker's kernel modules, held open from the
	// initramfs until the setup says whether Docker runs.
	dockerMods *moduleSet

	mu      sync.Mutex
	mounted []agentapi.Workspace // guarded by mu; in mount order
	env     []string             // guarded by mu; from the network setup
	docker  *dockerd             // guarded by mu; set by the first Docker setup
}

// NewGuest returns a Guest reading and rewriting users under etcDir
// ("/etc" when empty).
func NewGuest(log *slog.Logger, etcDir string) *Guest {
	if etcDir == "" {
		etcDir = "/etc"
	}
	return &Guest{log: log, etc: etcDir, dockerMods: &moduleSet{}}
}

// Setup sets the hostname, renumbers the agent user, mounts the
// workspaces, configures the network, the system git identity and Docker
// (started in the background; see setupDocker). It is idempotent; a
// workspace already mounted at its path with its tag is left alone. All
// steps are attempted; their errors are joined.
func (g *Guest) Setup(ctx context.Context, req *agentapi.SetupRequest) error {
	var errs []error
	var times []any
	step := func(name string, f func() error) {
		start := time.Now()
		if err := f(); err != nil {
			errs = append(errs, err)
		}
		times = append(times, name, time.Since(start).Round(time.Microsecond).String())
	}
	if req.Identity != nil {
		// Fail closed: a guest resumed from a snapshot whose random pool
		// was not reseeded shares it with every other sandbox made from
		// that snapshot; nothing else is set up then.
		step("identity", func() error { return g.setIdentity(req.Identity) })
		if len(errs) > 0 {
			return fmt.Errorf("identity: %w", errors.Join(errs...))
		}
	}
	if req.Hostname != "" {
		step("hostname", func() error { return g.setHostname(req.Hostname) })
	}
	if req.User != "" {
		step("user", func() error { return g.setUser(req.User, req.UID, req.GID) })
	}
	for _, ws := range req.Workspaces {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		step("workspace "+ws.Tag, func() error { return g.mountWorkspace(ws) })
	}
	if req.Network != nil {
		step("network", func() error { return g.setupNetwork(req.Network) })
	}
	if req.Git != nil {
		step("git", func() error { return writeGitConfig(filepath.Join(g.etc, "gitconfig"), *req.Git) })
	}
	if req.User != "" {
		step("persistent", func() error { return g.ownPersistentScript(req.User) })
	}
	if req.Docker != nil && g.reaper != nil {
		step("docker", func() error { return g.setupDocker(ctx, req.User, req.Docker) })
	} else {
		// Shell sandboxes free the memory the modules hold.
		g.dockerMods.release()
	}
	g.log.Info("setup done", times...)
	return errors.Join(errs...)
}

func (g *Guest) setHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname %q: %w", name, err)
	}
	// Best effort: tools read these files (sudo resolves the hostname).
	_ = os.WriteFile(filepath.Join(g.etc, "hostname"), []byte(name+"\n"), 0o644)
	hosts := filepath.Join(g.etc, "hosts")
	b, err := os.ReadFile(hosts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var lines []string
	for l := range strings.Lines(string(b)) {
		if !strings.HasPrefix(l, "127.0.1.1") {
			lines = append(lines, strings.TrimRight(l, "\n"))
		}
	}
	if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "127.0.0.1") }) {
		lines = append([]string{"127.0.0.1\tlocalhost"}, lines...)
	}
	lines = append(lines, "127.0.1.1\t"+name)
	_ = os.WriteFile(hosts, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	return nil
}

func (g *Guest) setUser(name string, uid, gid int) error {
	if uid < 0 || gid < 0 {
		return fmt.Errorf("set up user %s: invalid uid %d or gid %d", name, uid, gid)
	}
	oldUID, oldGID, changed, err := renumberUser(g.etc, name, uid, gid)
	if err != nil {
		return fmt.Errorf("set up user %s: %w", name, err)
	}
	if !changed {
		return nil
	}
	acct, err := lookupAccount(g.etc, name)
	if err != nil {
		return fmt.Errorf("set up user %s: %w", name, err)
	}
	start := time.Now()
	if err := chownTree(acct.Home, oldUID, oldGID, uid, gid); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("set up user %s: %w", name, err)
	}
	g.log.Info("renumbered user", "user", name, "uid", uid, "gid", gid, "old_uid", oldUID, "old_gid", oldGID, "duration", time.Since(start))
	return nil
}

// mountedAt returns the source and fstype mounted at path, from mountinfo.
func mountedAt(path string) (source, fstype string, ok bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		pre, post, found := strings.Cut(sc.Text(), " - ")
		if !found {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 2 {
			continue
		}
		if unescapeMount(pf[4]) == path {
			source, fstype, ok = qf[1], qf[0], true // the last one wins (stacked mounts)
		}
	}
	return source, fstype, ok
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func (g *Guest) mountWorkspace(ws agentapi.Workspace) error {
	if ws.Tag == "" || !filepath.IsAbs(ws.Path) {
		return fmt.Errorf("mount workspace %q at %q: need a tag and an absolute path", ws.Tag, ws.Path)
	}
	path := filepath.Clean(ws.Path)
	g.mu.Lock()
	defer g.mu.Unlock()
	fs := ws.FS
	if fs == "" {
		fs = "9p"
	}
	if fs != "9p" && fs != "virtiofs" {
		return fmt.Errorf("mount workspace %q: unknown file system %q", ws.Tag, fs)
	}
	if src, fstype, ok := mountedAt(path); ok && (fstype == "9p" || fstype == "virtiofs") {
		if src == ws.Tag {
			return nil
		}
		return fmt.Errorf("mount workspace %q at %s: share %q is already mounted there", ws.Tag, path, src)
	}
	if err := noUserSymlink(path); err != nil {
		return fmt.Errorf("mount workspace %q: %w", ws.Tag, err)
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("mount workspace %q: %w", ws.Tag, err)
	}
	var flags uintptr = unix.MS_NOSUID | unix.MS_NODEV
	if ws.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	start := time.Now()
	opts := NinePOptions
	if fs == "virtiofs" {
		opts = ""
	}
	if err := unix.Mount(ws.Tag, path, fs, flags, opts); err != nil {
		return fmt.Errorf("mount workspace %q at %s (%s): %w", ws.Tag, path, fs, err)
	}
	g.mounted = append(g.mounted, agentapi.Workspace{Tag: ws.Tag, Path: path, ReadOnly: ws.ReadOnly, FS: fs})
	g.log.Info("mounted workspace", "tag", ws.Tag, "path", path, "fs", fs, "read_only", ws.ReadOnly, "duration", time.Since(start))
	return nil
}

// noUserSymlink reports an error if a component of the absolute path is a
// symlink not owned by root; the check ends at the first missing one. The path may lie in a directory the agent
// user owns (its home), and a symlink of theirs would move a mount
// elsewhere (over /etc, say); the template's own links (/var/run) are
// root's. Setup runs before any process of the user, so the check holds
// for the mkdir and mount that follow.
func noUserSymlink(path string) error {
	cur := "/"
	for c := range strings.SplitSeq(filepath.Clean(path), "/") {
		if c == "" {
			continue
		}
		cur = filepath.Join(cur, c)
		fi, err := os.Lstat(cur)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			continue
		}
		if o, ok := fileOwner(fi); !ok || o.uid != 0 {
			return fmt.Errorf("%s: %s is a symlink of uid %d, not followed", path, cur, o.uid)
		}
	}
	return nil
}

// PowerOff stops every process, syncs, unmounts workspaces and other
// filesystems (best effort), remounts the root read-only and powers the
// machine off. It does not return unless the power-off call fails, in
// which case it logs and halts the calling goroutine forever.
func (g *Guest) PowerOff() {
	g.log.Info("powering off")
	// dockerd first: it stops its containers and unmounts their layers
	// before everything else is signalled and /var/lib/docker unmounted.
	g.stopDocker()
	unix.Sync()
	_ = unix.Kill(-1, unix.SIGTERM)
	time.Sleep(500 * time.Millisecond)
	_ = unix.Kill(-1, unix.SIGKILL)
	g.mu.Lock()
	for _, ws := range slices.Backward(g.mounted) {
		if err := unix.Unmount(ws.Path, 0); err != nil {
			_ = unix.Unmount(ws.Path, unix.MNT_DETACH)
		}
	}
	g.mounted = nil
	g.mu.Unlock()
	unmountAll(g.log)
	powerOff(g.log)
}

// unmountAll unmounts everything but the root and the kernel filesystems,
// deepest first, and remounts the root read-only.
func unmountAll(log *slog.Logger) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err == nil {
		var points []string
		for l := range strings.Lines(string(b)) {
			f := strings.Fields(l)
			if len(f) < 3 {
				continue
			}
			p := unescapeMount(f[1])
			switch {
			case p == "/", p == "/proc", p == "/sys", p == "/dev", strings.HasPrefix(p, "/sys/"), strings.HasPrefix(p, "/proc/"):
				continue
			}
			points = append(points, p)
		}
		for _, p := range slices.Backward(points) {
			if err := unix.Unmount(p, 0); err != nil {
				log.Debug("unmount", "path", p, "err", err)
			}
		}
	}
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Warn("remount root read-only", "err", err)
	}
	unix.Sync()
}

func powerOff(log *slog.Logger) {
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	log.Error("power off failed; halting", "err", err)
	select {}
}

// persistentScript is sourced by every login shell of templates that have
// it; it belongs to the agent user so they can edit it.
const persistentScript = "sandbox-persistent.sh"

// ownPersistentScript gives /etc/sandbox-persistent.sh, if the template
// has it, to user's current uid and gid (the user is renumbered at setup).
// The file is the user's: it is opened without following a symlink and
// chowned by descriptor, and a symlink, a non-regular file or a file with
// other hard links is refused, so root never hands over another file.
func (g *Guest) ownPersistentScript(user string) error {
	p := filepath.Join(g.etc, persistentScript)
	etc, err := os.Open(g.etc)
	if err != nil {
		return fmt.Errorf("own %s: %w", p, err)
	}
	defer etc.Close()
	fd, err := openatNoFollow(int(etc.Fd()), persistentScript, unix.O_RDONLY|unix.O_NONBLOCK)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("own %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	if err := checkSingleFile(f); err != nil {
		return fmt.Errorf("own %s: %w", p, err)
	}
	acct, err := lookupAccount(g.etc, user)
	if err != nil {
		return fmt.Errorf("own %s: %w", p, err)
	}
	if err := f.Chown(acct.UID, acct.GID); err != nil {
		return fmt.Errorf("own %s: %w", p, err)
	}
	return nil
}

// Markers around the part of /etc/gitconfig the agent writes.
const (
	gitMarkerBegin = "# sbx: host git identity (begin)\n"
	gitMarkerEnd   = "# sbx: host git identity (end)\n"
)

// writeGitConfig puts id's name and email in path's [user] section, between
// markers that are replaced on each setup; the rest of the file is kept.
// System level, so a user's ~/.gitconfig still wins.
func writeGitConfig(path string, id agentapi.GitIdentity) error {
	var sec strings.Builder
	for _, kv := range [][2]string{{"name", id.Name}, {"email", id.Email}} {
		if kv[1] == "" {
			continue
		}
		if strings.ContainsAny(kv[1], "\n\r\x00") {
			return fmt.Errorf("git identity: %s holds a line break", kv[0])
		}
		v := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(kv[1])
		fmt.Fprintf(&sec, "\t%s = \"%s\"\n", kv[0], v)
	}
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("git identity: %w", err)
	}
	if i := strings.Index(string(old), gitMarkerBegin); i >= 0 {
		if j := strings.Index(string(old[i:]), gitMarkerEnd); j >= 0 {
			old = append(old[:i:i], old[i+j+len(gitMarkerEnd):]...)
		}
	}
	next := string(old)
	if sec.Len() > 0 {
		if next != "" && !strings.HasSuffix(next, "\n") {
			next += "\n"
		}
		next += gitMarkerBegin + "[user]\n" + sec.String() + gitMarkerEnd
	}
	if next == string(old) {
		return nil
	}
	if err := writeAtomicMode(path, []byte(next), 0o644); err != nil {
		return fmt.Errorf("git identity: %w", err)
	}
	return nil
}
