package template

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sbx-dev/sbx/internal/safefile"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Names of the built-in templates.
const (
	// DefaultName is the template of the shell agent and of images
	// without an agent.
	DefaultName = "shell"
	// AgentsName is the template every coding agent shares.
	AgentsName = "agents"
)

// DefaultPackages are installed into the default template on top of
// debootstrap's minbase variant.
var DefaultPackages = []string{
	"bash", "coreutils", "curl", "ca-certificates", "git", "iproute2", "procps",
	"sudo", "less", "vim-tiny", "openssh-client", "xz-utils", "netbase", "iputils-ping",
}

// AgentPackages are added to DefaultPackages in the agents template:
// the tools coding agents expect, and Docker Engine.
var AgentPackages = []string{
	"docker.io", "python3", "python3-venv", "make", "ripgrep", "jq", "unzip", "patch", "file",
}

// Agent account inside every template.
const (
	AgentUser = "agent"
	AgentUID  = 1000
	AgentGID  = 1000
	AgentHome = "/home/agent"
)

// headroomBytes is the free space added to a new image; the guest grows
// the file system to its disk at boot, so this only needs to cover the
// first moments.
const headroomBytes = 1 << 30

var (
	// ErrNotFound is returned when no template has the name.
	ErrNotFound = errors.New("template not found")
	// ErrInUse is returned by Remove when a sandbox disk is backed by the
	// template's image.
	ErrInUse = errors.New("template is in use")
	// ErrNeedRoot is returned when building a template needs root.
	ErrNeedRoot = errors.New("building a template needs root")
)

// Template is a root file system image sandboxes boot from.
type Template struct {
	Name      string
	ID        string // sha256 hex of the image content
	Image     string // path to the ext4 raw image
	Created   time.Time
	SizeBytes int64 // apparent size of the image
	// Packages are the packages the template was built with.
	Packages []string
	// Source says where the template came from: "debootstrap SUITE",
	// "image REF@DIGEST", "file PATH", "sandbox NAME (TEMPLATE)".
	Source string
	// Agents are the coding agents whose CLIs the template has; empty for
	// templates not built by sbx, which are assumed to have none.
	Agents []string
	// Versions are the pinned versions of what the template carries beyond
	// its packages ("node", "claude", ...).
	Versions map[string]string
	// Docker reports whether the template has Docker Engine (dockerd).
	Docker bool

	// Recipe identifies the recipe a built-in template was built from.
	Recipe string
}

// manifest is <name>.json.
type manifest struct {
	Version  int               `json:"version"`
	Name     string            `json:"name"`
	ID       string            `json:"id"`
	Created  time.Time         `json:"created"`
	Suite    string            `json:"suite,omitempty"`
	Packages []string          `json:"packages,omitempty"`
	Source   string            `json:"source,omitempty"`
	Agents   []string          `json:"agents,omitempty"`
	Versions map[string]string `json:"versions,omitempty"`
	Docker   bool              `json:"docker,omitempty"`
	// Key identifies the recipe of a built-in template (packages, lock
	// file); a built-in template whose key differs is rebuilt.
	Key string `json:"key,omitempty"`
}

func templatesDir(cacheDir string) string { return filepath.Join(cacheDir, "templates") }

// Lookup returns the template called name, or an error wrapping
// ErrNotFound.
func Lookup(cacheDir, name string) (Template, error) {
	if err := validName(name); err != nil {
		return Template{}, err
	}
	return lookupFile(templatesDir(cacheDir), name, name+".json")
}

// lookupFile reads the manifest file of template name in dir.
func lookupFile(dir, name, file string) (Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if errors.Is(err, fs.ErrNotExist) {
		return Template{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return Template{}, fmt.Errorf("read template %s: %w", name, err)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Template{}, fmt.Errorf("parse template manifest %s: %w", name, err)
	}
	if m.Version != 1 {
		return Template{}, fmt.Errorf("template %s: manifest version %d not supported", name, m.Version)
	}
	img := filepath.Join(dir, m.ID+".ext4")
	st, err := os.Stat(img)
	if err != nil {
		return Template{}, fmt.Errorf("template %s image: %w (remove it with `sbx template rm %s` and rebuild)", name, err, name)
	}
	return Template{
		Name: m.Name, ID: m.ID, Image: img, Created: m.Created, SizeBytes: st.Size(),
		Packages: m.Packages, Source: m.Source, Agents: m.Agents, Versions: m.Versions, Docker: m.Docker,
		Recipe: m.Key,
	}, nil
}

// List returns every template in cacheDir, sorted by name. Broken entries
// are skipped. A missing cache is an empty list.
func List(cacheDir string) ([]Template, error) {
	ents, err := os.ReadDir(templatesDir(cacheDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	var out []Template
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		t, err := Lookup(cacheDir, name)
		if err != nil {
			continue
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Template) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Remove deletes template name: its manifest, and its image unless another
// template names the same image. inUse reports whether a sandbox disk is
// backed by an image id; when it says true Remove returns an error wrapping
// ErrInUse and changes nothing. inUse may be nil. Remove takes the
// templates lock, so it waits for a build in progress to finish.
func Remove(cacheDir, name string, inUse func(id string) bool) error {
	ctx := context.Background()
	unlock, err := safefile.Lock(ctx, filepath.Join(templatesDir(cacheDir), ".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	t, err := Lookup(cacheDir, name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		// A manifest without its image can still be removed.
		mf := filepath.Join(templatesDir(cacheDir), name+".json")
		if _, serr := os.Stat(mf); serr == nil {
			return os.Remove(mf)
		}
	}
	if err != nil {
		return err
	}
	dir := templatesDir(cacheDir)
	if (inUse != nil && inUse(t.ID)) || leased(dir, t.ID) {
		return fmt.Errorf("remove template %s: %w by a sandbox (remove the sandboxes that use it first)", name, ErrInUse)
	}
	if err := os.Remove(filepath.Join(dir, name+".json")); err != nil {
		return fmt.Errorf("remove template %s: %w", name, err)
	}
	// Recipe aliases of the removed template go with it.
	if aliases, err := filepath.Glob(filepath.Join(dir, ".builtin-"+name+"-*.json")); err == nil {
		for _, a := range aliases {
			os.Remove(a)
		}
	}
	all, err := List(cacheDir)
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.ID == t.ID {
			return nil
		}
	}
	if err := os.Remove(t.Image); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove template image: %w", err)
	}
	os.RemoveAll(leasesDir(dir, t.ID))
	_, err = collect(dir)
	return err
}

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("invalid template name %q", name)
	}
	return nil
}

// recipe is how a built-in template is made.
type recipe struct {
	name     string
	packages []string
	// agents installs the agent CLIs and Node.js from the lock file, and
	// configures Docker Engine.
	agents bool
}

// recipeRevision is bumped whenever configure or configureAgents change
// what they write, so built-in templates are rebuilt.
const recipeRevision = 2

// key identifies the recipe: its packages and, for agents, the lock file.
func (r recipe) key() string {
	h := sha256.New()
	fmt.Fprintf(h, "revision %d\npackages %s\n", recipeRevision, strings.Join(r.packages, ","))
	if r.agents {
		h.Write(agentsPackageJSON)
		h.Write(agentsLock)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func builtin(name string) (recipe, bool) {
	switch name {
	case DefaultName:
		return recipe{name: DefaultName, packages: DefaultPackages}, true
	case AgentsName:
		return recipe{name: AgentsName, packages: append(slices.Clone(DefaultPackages), AgentPackages...), agents: true}, true
	}
	return recipe{}, false
}

// IsBuiltin reports whether name is a template sbx builds itself.
func IsBuiltin(name string) bool {
	_, ok := builtin(name)
	return ok
}

// EnsureDefault returns the default template "shell"; see Ensure.
func EnsureDefault(ctx context.Context, cacheDir string, progress io.Writer) (Template, error) {
	return Ensure(ctx, cacheDir, DefaultName, progress)
}

// Ensure returns the built-in template name ("shell" or "agents"),
// building it on first use: debootstrap (minbase) of the host's suite from
// the host's apt mirror with the recipe's packages, configured for the
// guest agent; for "agents" also Node.js and the agent CLIs from the
// committed lock file, installed with the host's npm. The tree is packed
// into a sparse ext4 image. Building needs root, debootstrap and
// mkfs.ext4 (and npm for agents), takes one to a few minutes and writes
// progress lines (and the tools' output) to progress, which may be nil.
// Builds are serialised by a lock across processes and renamed into place,
// so an interrupted build leaves nothing usable half-written; a later call
// cleans its leftovers.
//
// A built-in template built from another recipe (an older sbx, another
// lock file) is replaced by a new build; the old image stays for the
// sandboxes whose disks it backs.
func Ensure(ctx context.Context, cacheDir, name string, progress io.Writer) (Template, error) {
	r, ok := builtin(name)
	if !ok {
		return Template{}, fmt.Errorf("%w: %s is not a built-in template", ErrNotFound, name)
	}
	current := func() (Template, bool) {
		if t, err := Lookup(cacheDir, name); err == nil && t.Recipe == r.key() {
			return t, true
		}
		// Another sbx version sharing the cache may have rebuilt the
		// template from its own recipe since; this one's build is still
		// there under its recipe alias.
		t, err := lookupFile(templatesDir(cacheDir), name, recipeAlias(name, r.key()))
		return t, err == nil && t.Recipe == r.key()
	}
	if t, ok := current(); ok {
		return t, nil
	}
	if progress == nil {
		progress = io.Discard
	}
	dir := templatesDir(cacheDir)
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return Template{}, err
	}
	defer unlock()
	if t, ok := current(); ok {
		return t, nil
	}
	hr, err := DetectHostRelease("/")
	if err != nil {
		return Template{}, err
	}
	return build(ctx, dir, r, hr, progress)
}

// recipeAlias is the hidden manifest that keeps a built-in template
// findable by its recipe key, so two sbx versions sharing a cache do not
// rebuild it in turn.
func recipeAlias(name, key string) string { return ".builtin-" + name + "-" + key + ".json" }

// lockDir creates dir, takes the templates lock and removes what an
// interrupted build or import left behind.
func lockDir(ctx context.Context, dir string) (func(), error) {
	// 0700: a template saved from a sandbox may hold what its agent kept
	// outside the workspace (logins, tokens).
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create template cache: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("template cache: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() != 0 && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("template cache %s belongs to uid %d, not you (a build as root into your cache made it): run `sudo chown -R %d:%d %s`", dir, st.Uid, os.Geteuid(), os.Getegid(), dir)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("restrict template cache: %w", err)
		}
	}
	unlock, err := safefile.Lock(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return nil, err
	}
	safefile.RemoveTemps(dir, ".tmp-")
	// Root building into a user's cache (sudo SBX_CACHE_DIR=... sbx
	// template build) leaves what it made to that user, who owns the
	// cache: else their own sbx could not read the template.
	return func() {
		giveToCacheOwner(dir)
		unlock()
	}, nil
}

// giveToCacheOwner, as root, gives dir and what root made in it to the
// owner of dir's parent (the cache folder) when that is not root. Links
// are never followed.
func giveToCacheOwner(dir string) {
	if os.Geteuid() != 0 {
		return
	}
	pfi, err := os.Stat(filepath.Dir(dir))
	if err != nil {
		return
	}
	pst, ok := pfi.Sys().(*syscall.Stat_t)
	if !ok || pst.Uid == 0 {
		return
	}
	uid, gid := int(pst.Uid), int(pst.Gid)
	chown := func(p string) {
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink == 0 {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == 0 {
				_ = os.Lchown(p, uid, gid)
			}
		}
	}
	chown(dir)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		chown(filepath.Join(dir, e.Name()))
	}
}

func build(ctx context.Context, dir string, r recipe, hr HostRelease, progress io.Writer) (Template, error) {
	name := r.name
	if os.Geteuid() != 0 {
		return Template{}, fmt.Errorf("%w (debootstrap needs chroot and device nodes): run it once as root into this cache (sudo SBX_CACHE_DIR=%s sbx template build %s), or run sbx as root", ErrNeedRoot, filepath.Dir(dir), name)
	}
	debootstrap, err := exec.LookPath("debootstrap")
	if err != nil {
		return Template{}, fmt.Errorf("debootstrap not found: install it with `apt-get install debootstrap`: %w", err)
	}
	var npm string
	if r.agents {
		if npm, err = exec.LookPath("npm"); err != nil {
			return Template{}, fmt.Errorf("npm not found (the agent CLIs are installed with the host's npm and its registry settings): install it with `apt-get install npm`: %w", err)
		}
	}
	tmp, err := os.MkdirTemp(dir, ".tmp-"+name+"-")
	if err != nil {
		return Template{}, fmt.Errorf("create template temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "root")

	// The mirror may carry credentials: debootstrap and apt get them, the
	// output and errors of the build do not.
	progress, flush := redactProgress(progress, hr.Mirror)
	defer flush()
	start := time.Now()
	about := "about a minute"
	if r.agents {
		about = "a few minutes"
	}
	fmt.Fprintf(progress, "building template %s (first run only, %s)...\n", name, about)
	// debootstrap installs only the packages every template has; the rest
	// go in with apt-get in the chroot, after services are kept from
	// starting on the host (docker.io ships an init script).
	cmd := exec.CommandContext(ctx, debootstrap, "--variant=minbase",
		"--include="+strings.Join(DefaultPackages, ","), hr.Suite, root, hr.Mirror)
	cmd.Stdout, cmd.Stderr = progress, progress
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	if err := cmd.Run(); err != nil {
		hint := ""
		if log, rerr := os.ReadFile(filepath.Join(root, "debootstrap", "debootstrap.log")); rerr == nil {
			hint = "; last lines of debootstrap.log: " + lastLines(string(log), 5)
			if redact := mirrorRedactor(hr.Mirror); redact != nil {
				hint = redact(hint)
			}
		}
		return Template{}, fmt.Errorf("debootstrap %s from %s: %w%s", hr.Suite, hr.SafeMirror(), err, hint)
	}
	if extra := r.packages[len(DefaultPackages):]; len(extra) > 0 {
		fmt.Fprintf(progress, "installing %s...\n", strings.Join(extra, " "))
		if err := aptInstall(ctx, root, extra, progress); err != nil {
			return Template{}, err
		}
	}
	tBoot := time.Since(start)
	m := manifest{Suite: hr.Suite, Packages: r.packages, Source: "debootstrap " + hr.Suite, Key: r.key()}
	if r.agents {
		t1 := time.Now()
		versions, err := installAgents(ctx, npm, root, progress)
		if err != nil {
			return Template{}, err
		}
		m.Versions = versions
		m.Agents = AgentNames()
		m.Docker = true
		fmt.Fprintf(progress, "agent CLIs installed in %.0fs\n", time.Since(t1).Seconds())
	}
	if err := configure(ctx, root); err != nil {
		return Template{}, fmt.Errorf("configure template %s: %w", name, err)
	}
	if r.agents {
		if err := configureAgents(ctx, root); err != nil {
			return Template{}, fmt.Errorf("configure template %s: %w", name, err)
		}
	}
	// Last, after every apt step: the sources keep no credentials.
	if err := scrubAptSources(root); err != nil {
		return Template{}, fmt.Errorf("configure template %s: %w", name, err)
	}
	t, err := pack(ctx, dir, name, root, m, progress)
	if err != nil {
		return Template{}, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, name+".json")); err == nil {
		if err := safefile.Write(filepath.Join(dir, recipeAlias(name, m.Key)), b, 0o444); err != nil {
			return Template{}, fmt.Errorf("write recipe alias of template %s: %w", name, err)
		}
	}
	// The image this build replaces goes once no sandbox disk uses it.
	if freed, err := collect(dir); err == nil && freed > 0 {
		fmt.Fprintf(progress, "removed unused template images (%d MiB)\n", freed>>20)
	}
	fmt.Fprintf(progress, "template %s ready in %.0fs (packages %.0fs)\n", name, time.Since(start).Seconds(), tBoot.Seconds())
	return t, nil
}

// aptInstall installs pkgs in the chroot root with apt-get, from the
// sources debootstrap wrote. A policy-rc.d keeps package scripts from
// starting services on the host while they run.
func aptInstall(ctx context.Context, root string, pkgs []string, progress io.Writer) error {
	policy := filepath.Join(root, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return fmt.Errorf("write policy-rc.d: %w", err)
	}
	defer os.Remove(policy)
	// The host's proxy settings (environment and apt's own) apply in the
	// chroot too, as they did to debootstrap.
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "HOME=/root"}
	for _, k := range []string{"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	aptOpts := hostAptProxy(ctx)
	for _, args := range [][]string{
		append(append([]string{"apt-get"}, aptOpts...), "update", "-q"),
		append(append(append([]string{"apt-get"}, aptOpts...), "install", "-y", "-q", "--no-install-recommends"), pkgs...),
	} {
		cmd := exec.CommandContext(ctx, "chroot", append([]string{root}, args...)...)
		cmd.Stdout, cmd.Stderr = progress, progress
		cmd.Env = env
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s in the template: %w (see the output above)", strings.Join(args[len(aptOpts):len(aptOpts)+2], " "), err)
		}
	}
	return nil
}

// hostAptProxy returns apt-get options carrying the host apt's proxy
// settings (Acquire::http::Proxy and Acquire::https::Proxy), if any.
func hostAptProxy(ctx context.Context) []string {
	out, err := exec.CommandContext(ctx, "apt-config", "dump", "Acquire").Output()
	if err != nil {
		return nil
	}
	return parseAptProxy(string(out))
}

// parseAptProxy picks the proxy settings out of `apt-config dump` output.
func parseAptProxy(dump string) []string {
	var opts []string
	for line := range strings.SplitSeq(dump, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		if strings.EqualFold(k, "Acquire::http::Proxy") || strings.EqualFold(k, "Acquire::https::Proxy") {
			v = strings.Trim(strings.TrimSuffix(v, ";"), `"`)
			if v != "" {
				opts = append(opts, "-o", k+"="+v)
			}
		}
	}
	return opts
}

// pack turns the tree root into template name: an ext4 image named by its
// content, read-only, and the manifest m (Version, Name, ID and Created
// are filled in). The caller holds the templates lock; root is removed.
func pack(ctx context.Context, dir, name, root string, m manifest, progress io.Writer) (Template, error) {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return Template{}, fmt.Errorf("mkfs.ext4 not found: install it with `apt-get install e2fsprogs`: %w", err)
	}
	used, err := duBytes(root)
	if err != nil {
		return Template{}, err
	}
	size := roundUp(used+used/10+headroomBytes, 1<<20)
	fmt.Fprintf(progress, "packing template %s into an ext4 image (%d MiB)...\n", name, size>>20)
	t1 := time.Now()
	tmp, err := os.MkdirTemp(dir, ".tmp-pack-")
	if err != nil {
		return Template{}, fmt.Errorf("create template temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	img := filepath.Join(tmp, "image.ext4")
	f, err := os.Create(img)
	if err != nil {
		return Template{}, fmt.Errorf("create image: %w", err)
	}
	f.Close()
	if out, err := exec.CommandContext(ctx, mkfs, "-q", "-L", "sbx-root", "-d", root, "-F", img, strconv.FormatInt(size>>10, 10)+"k").CombinedOutput(); err != nil {
		return Template{}, fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.RemoveAll(root); err != nil {
		return Template{}, fmt.Errorf("remove build tree: %w", err)
	}
	return commitImage(dir, name, img, m, progress, t1)
}

// commitImage moves the ext4 image img into the cache under its content
// hash and writes the manifest of template name. The caller holds the
// templates lock.
func commitImage(dir, name, img string, m manifest, progress io.Writer, since time.Time) (Template, error) {
	id, err := fileSHA256(img)
	if err != nil {
		return Template{}, err
	}
	if err := os.Chmod(img, 0o444); err != nil {
		return Template{}, fmt.Errorf("chmod image: %w", err)
	}
	if err := track(dir, id); err != nil {
		return Template{}, err
	}
	finalImg := filepath.Join(dir, id+".ext4")
	if err := os.Rename(img, finalImg); err != nil {
		return Template{}, fmt.Errorf("move image into cache: %w", err)
	}
	m.Version, m.Name, m.ID = 1, name, id
	m.Created = time.Now().UTC().Truncate(time.Second)
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Template{}, fmt.Errorf("encode manifest: %w", err)
	}
	if err := safefile.Write(filepath.Join(dir, name+".json"), append(b, '\n'), 0o444); err != nil {
		return Template{}, fmt.Errorf("write manifest: %w", err)
	}
	fmt.Fprintf(progress, "image of template %s written in %.1fs\n", name, time.Since(since).Seconds())
	return Lookup(filepath.Dir(dir), name)
}

// PersistentFile is sourced by every login shell in a sandbox; the agent
// user owns it, for environment wanted in every session.
const PersistentFile = "/etc/sandbox-persistent.sh"

const (
	// Root's login shells do not source the agent-owned file: in an image
	// where the agent user has no sudo, that would hand it root.
	persistentHook = "# Written by sbx: environment the user keeps for every login shell.\n" +
		"if [ \"$(id -u)\" != 0 ] && [ -r " + PersistentFile + " ]; then . " + PersistentFile + "; fi\n"
	persistentInit = "# Sourced by every login shell in this sandbox (bash -l, and the agents\n" +
		"# sbx starts). Add exports here, e.g.: export EDITOR=vim\n"
)

// configure turns a debootstrap tree into a root the guest agent boots.
func configure(ctx context.Context, root string) error {
	chroot := func(args ...string) error {
		out, err := exec.CommandContext(ctx, "chroot", append([]string{root}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("chroot %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := chroot("groupadd", "-g", strconv.Itoa(AgentGID), AgentUser); err != nil {
		return err
	}
	if err := chroot("useradd", "-m", "-u", strconv.Itoa(AgentUID), "-g", strconv.Itoa(AgentGID),
		"-d", AgentHome, "-s", "/bin/bash", AgentUser); err != nil {
		return err
	}
	files := []struct {
		path string
		data string
		mode os.FileMode
	}{
		{"etc/sudoers.d/agent", AgentUser + " ALL=(ALL) NOPASSWD:ALL\n", 0o440},
		{"etc/hostname", "sbx\n", 0o644},
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsbx\n", 0o644},
		{"etc/fstab", "# empty: the sbx guest agent mounts everything\n", 0o644},
		{"etc/resolv.conf", "", 0o644}, // written by the guest agent at boot
		{"etc/profile.d/zz-sandbox-persistent.sh", persistentHook, 0o644},
		{PersistentFile[1:], persistentInit, 0o644},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		os.Remove(p) // may be a symlink
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("write /%s: %w", f.path, err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			return fmt.Errorf("chmod /%s: %w", f.path, err)
		}
	}
	if err := os.Chown(filepath.Join(root, PersistentFile), AgentUID, AgentGID); err != nil {
		return fmt.Errorf("chown %s: %w", PersistentFile, err)
	}
	// Drop what only the build needed: downloaded packages, apt lists and
	// caches, logs.
	for _, g := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*", "var/log/*.log", "var/log/apt/*"} {
		m, _ := filepath.Glob(filepath.Join(root, g))
		for _, p := range m {
			if filepath.Base(p) == "partial" || filepath.Base(p) == "lock" {
				continue
			}
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("clean %s: %w", p, err)
			}
		}
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// duBytes sums the allocated size of everything under root (hard links
// once), rounded per file to 4 KiB blocks as ext4 will store them.
func duBytes(root string) (int64, error) {
	var total int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if ino, nlink := inodeOf(info); nlink > 1 {
			if seen[ino] {
				return nil
			}
			seen[ino] = true
		}
		total += roundUp(info.Size(), 4096) + 256 // plus an inode
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure template tree: %w", err)
	}
	return total, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
