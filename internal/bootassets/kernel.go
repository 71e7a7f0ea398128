package bootassets

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sbx-dev/sbx/internal/safefile"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultKernelPackage is the Debian metapackage whose kernel sbx boots.
const DefaultKernelPackage = "linux-image-amd64"

// Kernel sources, the prefix of Kernel.Source.
const (
	SourceDebianPackage = "debian-package" // "debian-package:<pkg>=<version>"
	SourceHost          = "host"
	SourceUser          = "user"
)

// Kernel is a guest kernel ready to boot.
type Kernel struct {
	// Path is the uncompressed ELF vmlinux, or the bzImage when it could not
	// be extracted.
	Path string `json:"path"`
	// Release is the kernel release, as `uname -r` prints it in the guest.
	Release string `json:"release"`
	// ModulesDir is the kernel's module tree (.../lib/modules/<release>).
	// Empty only for a user kernel given without modules.
	ModulesDir string `json:"modulesDir"`
	// Source says where it came from: "debian-package:<pkg>=<version>",
	// "host" or "user".
	Source string `json:"source"`
}

// Options are the caller's choices for EnsureKernel. The package reads no
// environment variables: the CLI fills this from SBX_KERNEL and
// SBX_KERNEL_MODULES.
type Options struct {
	// KernelPath names a kernel to use instead of the Debian one: a vmlinux
	// or a bzImage/vmlinuz (SBX_KERNEL).
	KernelPath string
	// ModulesDir is the module tree for KernelPath, ending in the release
	// (SBX_KERNEL_MODULES). May be empty when the drivers are built in.
	ModulesDir string
	// Package is the Debian metapackage to resolve; DefaultKernelPackage
	// when empty.
	Package string
	// Logger receives debug records; slog.Default when nil.
	Logger *slog.Logger
}

// kernelManifest is kernel.json in a cached kernel directory.
type kernelManifest struct {
	Version int       `json:"version"`
	Kernel            // paths relative to the directory
	Created time.Time `json:"created"`
}

// ErrAptListsMissing is returned when apt has no package lists, so the
// kernel package cannot be resolved.
var ErrAptListsMissing = errors.New("apt package lists are missing")

// EnsureKernel is Options{}.EnsureKernel.
func EnsureKernel(ctx context.Context, cacheDir string, progress io.Writer) (Kernel, error) {
	return Options{}.EnsureKernel(ctx, cacheDir, progress)
}

// EnsureKernel returns a kernel to boot, preparing it in cacheDir on first
// use. Order: the kernel o names; else Debian's o.Package, resolved with
// apt-cache to its versioned linux-image-<release> package, fetched with
// `apt-get download` (no root needed) and unpacked with `dpkg-deb -x` into
// <cacheDir>/kernel/<release>/ (never installed on the host); else, where
// that package does not exist (not Debian), the host's own kernel, with a
// note on progress. Human-readable progress lines go to progress (may be
// nil). It is safe to call concurrently from several processes: the build
// is locked and renamed into place, and a cached kernel is returned at once.
func (o Options) EnsureKernel(ctx context.Context, cacheDir string, progress io.Writer) (Kernel, error) {
	if progress == nil {
		progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.KernelPath != "" {
		return o.userKernel(ctx, cacheDir)
	}
	pkg := o.Package
	if pkg == "" {
		pkg = DefaultKernelPackage
	}
	k, err := o.debianKernel(ctx, cacheDir, pkg, progress)
	if err == nil {
		return k, nil
	}
	var na *packageUnavailableError
	if !errors.As(err, &na) {
		return Kernel{}, err
	}
	hk, herr := hostKernel(ctx, cacheDir)
	if herr != nil {
		return Kernel{}, fmt.Errorf("%w; host kernel fallback: %w", err, herr)
	}
	fmt.Fprintf(progress, "note: %v; using the host's own kernel %s instead (set SBX_KERNEL and SBX_KERNEL_MODULES to choose another)\n", err, hk.Release)
	return hk, nil
}

// packageUnavailableError means this host cannot provide the Debian kernel
// package at all (no apt, or apt does not know the package).
type packageUnavailableError struct{ reason string }

func (e *packageUnavailableError) Error() string { return e.reason }

var versionedImageRE = regexp.MustCompile(`^\s*\|?Depends:\s*(linux-image-[0-9][^\s<>]*)`)

// resolveKernelPackage maps the metapackage to its versioned dependency.
func resolveKernelPackage(ctx context.Context, pkg string) (name, release string, err error) {
	aptCache, err := exec.LookPath("apt-cache")
	if err != nil {
		return "", "", &packageUnavailableError{"apt-cache not found (not a Debian-based host)"}
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, aptCache, "depends", pkg)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if m := versionedImageRE.FindStringSubmatch(sc.Text()); m != nil {
			name = m[1]
			return name, strings.TrimPrefix(name, "linux-image-"), nil
		}
	}
	if !aptListsPresent() {
		return "", "", fmt.Errorf("resolve kernel package %s: %w; run `apt-get update` (as root) and retry", pkg, ErrAptListsMissing)
	}
	if runErr != nil || stdout.Len() == 0 {
		return "", "", &packageUnavailableError{fmt.Sprintf("package %s is not available from apt (%s)", pkg, strings.TrimSpace(stderr.String()))}
	}
	return "", "", &packageUnavailableError{fmt.Sprintf("package %s has no linux-image-<release> dependency", pkg)}
}

// resolvedPackage is <cacheDir>/kernel/resolved-<pkg>.json: apt-cache takes
// about a second per call, so the answer is kept until apt's lists change.
type resolvedPackage struct {
	Name       string    `json:"name"`
	Release    string    `json:"release"`
	ListsMtime time.Time `json:"listsMtime"`
}

const aptListsDir = "/var/lib/apt/lists"

// resolveKernelPackageCached is resolveKernelPackage, remembered in
// kernelRoot for as long as apt's list directory is unchanged.
func resolveKernelPackageCached(ctx context.Context, kernelRoot, pkg string) (name, release string, err error) {
	st, statErr := os.Stat(aptListsDir)
	file := filepath.Join(kernelRoot, "resolved-"+pkg+".json")
	if statErr == nil {
		if b, err := os.ReadFile(file); err == nil {
			var r resolvedPackage
			if json.Unmarshal(b, &r) == nil && r.ListsMtime.Equal(st.ModTime()) && r.Name != "" {
				return r.Name, r.Release, nil
			}
		}
	}
	name, release, err = resolveKernelPackage(ctx, pkg)
	if err != nil || statErr != nil {
		return name, release, err
	}
	if b, err := json.Marshal(resolvedPackage{Name: name, Release: release, ListsMtime: st.ModTime()}); err == nil {
		if os.MkdirAll(kernelRoot, 0o755) == nil {
			safefile.Write(file, b, 0o644) //nolint:errcheck // only a cache
		}
	}
	return name, release, nil
}

func aptListsPresent() bool {
	m, _ := filepath.Glob("/var/lib/apt/lists/*_Packages*")
	return len(m) > 0
}

func packageVersion(ctx context.Context, name string) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", name).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache show %s: %w", name, err)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("apt-cache show %s: no Version field", name)
}

// loadCachedKernel reads kernel.json in dir and makes its paths absolute.
func loadCachedKernel(dir string) (Kernel, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		return Kernel{}, err
	}
	var m kernelManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Kernel{}, fmt.Errorf("parse %s: %w", filepath.Join(dir, "kernel.json"), err)
	}
	k := m.Kernel
	k.Path = filepath.Join(dir, k.Path)
	if k.ModulesDir != "" {
		k.ModulesDir = filepath.Join(dir, k.ModulesDir)
	}
	if _, err := os.Stat(k.Path); err != nil {
		return Kernel{}, fmt.Errorf("cached kernel incomplete: %w", err)
	}
	return k, nil
}

// newestCachedDebianKernel returns the most recently created Debian kernel
// in the cache, for hosts that cannot reach apt right now.
func newestCachedDebianKernel(kernelRoot string) (Kernel, bool) {
	ents, err := os.ReadDir(kernelRoot)
	if err != nil {
		return Kernel{}, false
	}
	var best Kernel
	var bestTime time.Time
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(kernelRoot, e.Name())
		k, err := loadCachedKernel(dir)
		if err != nil || !strings.HasPrefix(k.Source, SourceDebianPackage+":") {
			continue
		}
		st, err := os.Stat(filepath.Join(dir, "kernel.json"))
		if err == nil && st.ModTime().After(bestTime) {
			best, bestTime = k, st.ModTime()
		}
	}
	return best, !bestTime.IsZero()
}

func (o Options) debianKernel(ctx context.Context, cacheDir, pkg string, progress io.Writer) (Kernel, error) {
	kernelRoot := filepath.Join(cacheDir, "kernel")
	name, release, err := resolveKernelPackageCached(ctx, kernelRoot, pkg)
	if err != nil {
		if errors.Is(err, ErrAptListsMissing) {
			if k, ok := newestCachedDebianKernel(kernelRoot); ok {
				o.Logger.Warn("apt lists missing, using cached kernel", "release", k.Release)
				return k, nil
			}
		}
		return Kernel{}, err
	}
	final := filepath.Join(kernelRoot, release)
	if k, err := loadCachedKernel(final); err == nil {
		return k, nil
	}
	unlock, err := safefile.Lock(ctx, filepath.Join(kernelRoot, ".lock"))
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	if k, err := loadCachedKernel(final); err == nil {
		return k, nil // another process built it while we waited
	}
	safefile.RemoveTemps(kernelRoot, ".tmp-")
	if _, err := os.Stat(final); err == nil {
		// A directory without a valid manifest is junk from an older build.
		if err := os.RemoveAll(final); err != nil {
			return Kernel{}, fmt.Errorf("remove incomplete kernel cache: %w", err)
		}
	}

	version, err := packageVersion(ctx, name)
	if err != nil {
		return Kernel{}, err
	}
	tmp, err := os.MkdirTemp(kernelRoot, ".tmp-"+release+"-")
	if err != nil {
		return Kernel{}, fmt.Errorf("create kernel temp dir: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op after the rename

	start := time.Now()
	fmt.Fprintf(progress, "downloading kernel %s=%s (first run only)...\n", name, version)
	dl := filepath.Join(tmp, "dl")
	if err := os.Mkdir(dl, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("create download dir: %w", err)
	}
	if err := aptDownload(ctx, dl, name+"="+version); err != nil {
		// Offline with newer apt lists than the cache: an older kernel
		// boots just as well.
		if k, ok := newestCachedDebianKernel(kernelRoot); ok {
			fmt.Fprintf(progress, "note: could not download kernel %s (%v); using cached kernel %s\n", name, err, k.Release)
			return k, nil
		}
		return Kernel{}, err
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("apt-get download %s left %d .deb files, want 1", name, len(debs))
	}
	o.Logger.Debug("kernel downloaded", "package", name, "version", version, "duration", time.Since(start))

	fmt.Fprintf(progress, "unpacking kernel %s...\n", release)
	t1 := time.Now()
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return Kernel{}, fmt.Errorf("unpack %s with dpkg-deb: %w: %s (install dpkg: apt-get install dpkg)", filepath.Base(debs[0]), err, strings.TrimSpace(string(out)))
	}
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-"+release)
	k := Kernel{Release: release, Source: SourceDebianPackage + ":" + name + "=" + version}
	switch err := ExtractVmlinux(ctx, vmlinuz, filepath.Join(tmp, "vmlinux")); {
	case err == nil:
		k.Path = "vmlinux"
	case errors.Is(err, ErrNoXZPayload):
		o.Logger.Warn("kernel not xz-compressed, booting the bzImage", "err", err)
		if err := os.Rename(vmlinuz, filepath.Join(tmp, "vmlinuz")); err != nil {
			return Kernel{}, fmt.Errorf("keep vmlinuz: %w", err)
		}
		k.Path = "vmlinuz"
	default:
		return Kernel{}, err
	}
	modsRel := filepath.Join("lib", "modules", release)
	var modsSrc string
	for _, cand := range []string{filepath.Join(root, "lib", "modules", release), filepath.Join(root, "usr", "lib", "modules", release)} {
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			modsSrc = cand
			break
		}
	}
	if modsSrc == "" {
		return Kernel{}, fmt.Errorf("package %s has no lib/modules/%s", name, release)
	}
	if err := os.MkdirAll(filepath.Join(tmp, "lib", "modules"), 0o755); err != nil {
		return Kernel{}, fmt.Errorf("create modules dir: %w", err)
	}
	if err := os.Rename(modsSrc, filepath.Join(tmp, modsRel)); err != nil {
		return Kernel{}, fmt.Errorf("move modules: %w", err)
	}
	if err := os.RemoveAll(root); err != nil {
		return Kernel{}, fmt.Errorf("clean unpacked package: %w", err)
	}
	if err := os.RemoveAll(dl); err != nil {
		return Kernel{}, fmt.Errorf("clean download: %w", err)
	}
	k.ModulesDir = modsRel
	m, err := json.MarshalIndent(kernelManifest{Version: 1, Kernel: k, Created: time.Now().UTC()}, "", "  ")
	if err != nil {
		return Kernel{}, fmt.Errorf("encode kernel.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "kernel.json"), append(m, '\n'), 0o644); err != nil {
		return Kernel{}, fmt.Errorf("write kernel.json: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("chmod kernel dir: %w", err)
	}
	if err := syncDir(tmp); err != nil {
		return Kernel{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return Kernel{}, fmt.Errorf("move kernel into cache: %w", err)
	}
	syncDir(kernelRoot) //nolint:errcheck // best effort; the rename is done
	o.Logger.Debug("kernel unpacked", "release", release, "duration", time.Since(t1))
	fmt.Fprintf(progress, "kernel %s ready (%.1fs)\n", release, time.Since(start).Seconds())
	return loadCachedKernel(final)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// aptDownload runs `apt-get download spec` in dir. As root, apt drops to the
// _apt user for downloads; the temp dir is private, so tell apt to stay
// root instead of warning about it.
func aptDownload(ctx context.Context, dir, spec string) error {
	aptGet, err := exec.LookPath("apt-get")
	if err != nil {
		return fmt.Errorf("apt-get not found: %w", err)
	}
	args := []string{"download", "-q"}
	if os.Geteuid() == 0 {
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	args = append(args, spec)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, aptGet, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("download kernel package %s with apt-get: %w: %s (check the network and the apt sources; `apt-get update` may help)", spec, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// hostKernel uses the running kernel: /boot/vmlinuz-<release> and
// /lib/modules/<release>. The vmlinux is extracted into the cache.
func hostKernel(ctx context.Context, cacheDir string) (Kernel, error) {
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err != nil {
		return Kernel{}, fmt.Errorf("uname: %w", err)
	}
	var rb []byte
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		rb = append(rb, byte(c))
	}
	release := string(rb)
	vmlinuz := "/boot/vmlinuz-" + release
	mods := "/lib/modules/" + release
	if _, err := os.Stat(mods); err != nil {
		return Kernel{}, fmt.Errorf("host modules %s: %w (set SBX_KERNEL and SBX_KERNEL_MODULES to a kernel and its modules)", mods, err)
	}
	f, err := os.Open(vmlinuz)
	if err != nil {
		return Kernel{}, fmt.Errorf("read host kernel: %w (some distributions make it readable by root only: copy it somewhere readable and set SBX_KERNEL to it)", err)
	}
	f.Close()
	k := Kernel{Path: vmlinuz, Release: release, ModulesDir: mods, Source: SourceHost}
	dir := filepath.Join(cacheDir, "kernel", "host-"+release)
	p, err := cachedVmlinux(ctx, dir, vmlinuz)
	if err != nil {
		return Kernel{}, err
	}
	k.Path = p
	return k, nil
}

// cachedVmlinux extracts vmlinuz into dir/vmlinux once (locked, atomic) and
// returns its path, or vmlinuz itself when it holds no xz stream.
func cachedVmlinux(ctx context.Context, dir, vmlinuz string) (string, error) {
	out := filepath.Join(dir, "vmlinux")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	unlock, err := safefile.Lock(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	safefile.RemoveTemps(dir, ".tmp-")
	tmp := filepath.Join(dir, fmt.Sprintf(".tmp-vmlinux-%d", os.Getpid()))
	defer os.Remove(tmp)
	if err := ExtractVmlinux(ctx, vmlinuz, tmp); err != nil {
		if errors.Is(err, ErrNoXZPayload) {
			return vmlinuz, nil
		}
		return "", err
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("move vmlinux into cache: %w", err)
	}
	return out, nil
}

func (o Options) userKernel(ctx context.Context, cacheDir string) (Kernel, error) {
	k := Kernel{Path: o.KernelPath, ModulesDir: o.ModulesDir, Source: SourceUser}
	if _, err := os.Stat(o.KernelPath); err != nil {
		return Kernel{}, fmt.Errorf("kernel named by SBX_KERNEL: %w", err)
	}
	if o.ModulesDir != "" {
		st, err := os.Stat(o.ModulesDir)
		if err != nil || !st.IsDir() {
			return Kernel{}, fmt.Errorf("modules dir named by SBX_KERNEL_MODULES (%s) is not a directory: it must be the lib/modules/<release> of that kernel", o.ModulesDir)
		}
		k.Release = filepath.Base(filepath.Clean(o.ModulesDir))
	}
	if ef, err := elf.Open(o.KernelPath); err == nil {
		ef.Close()
	} else {
		sum, err := fileSHA256(o.KernelPath)
		if err != nil {
			return Kernel{}, err
		}
		p, err := cachedVmlinux(ctx, filepath.Join(cacheDir, "kernel", "user-"+sum[:16]), o.KernelPath)
		if err != nil {
			return Kernel{}, err
		}
		k.Path = p
	}
	if k.Release == "" {
		r, err := KernelRelease(o.KernelPath)
		if err != nil {
			return Kernel{}, err
		}
		k.Release = r
	}
	return k, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	// One command hashes the same inputs more than once (the initramfs is
	// resolved for a new sandbox's snapshot and again for its start).
	stamp := fileHashKey{path, st.Size(), st.ModTime().UnixNano()}
	if v, ok := fileHashes.Load(stamp); ok {
		return v.(string), nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	fileHashes.Store(stamp, sum)
	return sum, nil
}

// fileHashes memoises fileSHA256 for the life of the process, by path,
// size and modification time.
var fileHashes sync.Map // fileHashKey -> string

type fileHashKey struct {
	path  string
	size  int64
	mtime int64
}

// ErrKernelNotCached is returned by CachedKernel when no kernel has been
// prepared yet.
var ErrKernelNotCached = errors.New("no guest kernel prepared yet")

// CachedKernel returns the kernel EnsureKernel would return without
// downloading, unpacking or writing anything: the user's kernel as named
// by o (its vmlinux if one was already extracted, else the file itself),
// else the cached Debian kernel that apt's current lists name, else the
// newest cached Debian kernel, else the host kernel if one was prepared.
// It returns an error wrapping ErrKernelNotCached when there is none. It
// suits `sbx diagnose`, which must not start a download.
func CachedKernel(cacheDir string, o Options) (Kernel, error) {
	if o.KernelPath != "" {
		k := Kernel{Path: o.KernelPath, ModulesDir: o.ModulesDir, Source: SourceUser}
		if _, err := os.Stat(o.KernelPath); err != nil {
			return Kernel{}, fmt.Errorf("kernel named by SBX_KERNEL: %w", err)
		}
		if ef, err := elf.Open(o.KernelPath); err == nil {
			ef.Close()
		} else if sum, err := fileSHA256(o.KernelPath); err == nil {
			if p := filepath.Join(cacheDir, "kernel", "user-"+sum[:16], "vmlinux"); fileExists(p) {
				k.Path = p
			}
		}
		if o.ModulesDir != "" {
			k.Release = filepath.Base(filepath.Clean(o.ModulesDir))
		} else if r, err := KernelRelease(o.KernelPath); err == nil {
			k.Release = r
		}
		return k, nil
	}
	kernelRoot := filepath.Join(cacheDir, "kernel")
	pkg := o.Package
	if pkg == "" {
		pkg = DefaultKernelPackage
	}
	if b, err := os.ReadFile(filepath.Join(kernelRoot, "resolved-"+pkg+".json")); err == nil {
		var r resolvedPackage
		if json.Unmarshal(b, &r) == nil && r.Release != "" {
			if k, err := loadCachedKernel(filepath.Join(kernelRoot, r.Release)); err == nil {
				return k, nil
			}
		}
	}
	if k, ok := newestCachedDebianKernel(kernelRoot); ok {
		return k, nil
	}
	var uts syscall.Utsname
	if syscall.Uname(&uts) == nil {
		var rb []byte
		for _, c := range uts.Release {
			if c == 0 {
				break
			}
			rb = append(rb, byte(c))
		}
		rel := string(rb)
		if p := filepath.Join(kernelRoot, "host-"+rel, "vmlinux"); fileExists(p) {
			return Kernel{Path: p, Release: rel, ModulesDir: "/lib/modules/" + rel, Source: SourceHost}, nil
		}
	}
	return Kernel{}, fmt.Errorf("%w in %s", ErrKernelNotCached, kernelRoot)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
