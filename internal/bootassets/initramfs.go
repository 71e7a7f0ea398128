package bootassets

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"github.com/sbx-dev/sbx/internal/safefile"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

// Layout of the initramfs, read by the guest agent.
const (
	// InitramfsModulesDir holds every module file, flat, by its file name.
	InitramfsModulesDir = "/lib/modules"
	// InitramfsModulesOrder lists the absolute paths of the module files,
	// one a line, in the order they must be loaded.
	InitramfsModulesOrder = "/lib/sbx/modules.order"
	// InitramfsDockerModules lists the modules Docker needs beyond the boot
	// set, loaded only in sandboxes that run Docker: one module a line, its
	// absolute path followed by the paths of the modules of this list it
	// depends on, space-separated; every module comes after its
	// dependencies.
	InitramfsDockerModules = "/lib/sbx/docker-modules.order"
)

// initramfsFormat changes whenever the layout below changes, so cached
// images built by an older sbx are not reused.
const initramfsFormat = "sbx-initramfs-v2"

var initramfsDirs = []string{"/dev", "/proc", "/sys", "/run", "/tmp", "/sysroot", "/lib", "/lib/modules", "/lib/sbx"}

// EnsureInitramfs returns the path of a newc cpio initramfs for kernel k
// whose /init is agentBinary (mode 0755). It contains the directories
// /dev /proc /sys /run /tmp /sysroot /lib/sbx, the character device
// /dev/console (5,1), the modules of ModuleClosure(k.ModulesDir,
// BootModules) as /lib/modules/<file>.ko and InitramfsModulesOrder, and
// the rest of ModuleGraph(k.ModulesDir, DockerModules) in
// InitramfsDockerModules. When k.ModulesDir is empty no modules are packed
// (the kernel must have the drivers built in) and both lists are empty.
// The modules of Debian's kernel are packed without their signatures (see
// stripSignatures).
//
// The file is <cacheDir>/initramfs/<sha256 of the inputs>.cpio, built
// under a lock into a temp file and renamed, so it is safe to call
// concurrently and returns at once when the same inputs were seen before.
// The returned file must not be modified.
func EnsureInitramfs(ctx context.Context, cacheDir string, k Kernel, agentBinary string) (string, error) {
	// Walking the module tree and hashing every input costs a few hundred
	// milliseconds per start; an index by file fingerprints answers at
	// once when nothing changed.
	quick := quickKey(cacheDir, k, agentBinary)
	if quick != "" {
		if b, err := os.ReadFile(quick); err == nil {
			name := strings.TrimSpace(string(b))
			if cpioName.MatchString(name) {
				p := filepath.Join(cacheDir, "initramfs", name)
				if st, err := os.Lstat(p); err == nil && st.Mode().IsRegular() {
					return p, nil
				}
			}
		}
	}
	final, err := ensureInitramfs(ctx, cacheDir, k, agentBinary)
	if err == nil && quick != "" {
		_ = safefile.Write(quick, []byte(filepath.Base(final)+"\n"), 0o644)
	}
	return final, err
}

var cpioName = regexp.MustCompile(`^[0-9a-f]{64}\.cpio$`)

// quickKey is the index file that names the initramfs for these inputs
// by the fingerprints of the agent binary, this program, the kernel and
// its module tree, or "" unless the kernel is Debian's, unpacked by sbx
// into the cache (a user's tree may change in place).
func quickKey(cacheDir string, k Kernel, agentBinary string) string {
	kernels := filepath.Clean(filepath.Join(cacheDir, "kernel")) + string(filepath.Separator)
	if !stripSignatures(k) || !strings.HasPrefix(filepath.Clean(k.ModulesDir), kernels) {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\nsource %s\nmodules %s\nkernel %s\nboot %q\ndocker %q\n", initramfsFormat, k.Source, k.ModulesDir, k.Path, BootModules, DockerModules)
	// The kernel and its module tree are re-unpacked at the same paths
	// when the cache entry is redone: their fingerprints change then.
	for _, p := range []string{agentBinary, "/proc/self/exe", k.Path, k.ModulesDir} {
		fp, ok := fingerprint(p)
		if !ok {
			return ""
		}
		fmt.Fprintf(h, "%s %s\n", p, fp)
	}
	return filepath.Join(cacheDir, "initramfs", "index-"+hex.EncodeToString(h.Sum(nil))[:32])
}

// fingerprint identifies a file's version without reading it: device,
// inode, size, mtime and ctime (which no one can set back).
func fingerprint(path string) (string, bool) {
	st, err := os.Stat(path)
	if err != nil {
		return "", false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return "", false
	}
	return fmt.Sprintf("%d:%d %d %d %d.%d", sys.Dev, sys.Ino, st.Size(), st.ModTime().UnixNano(), sys.Ctim.Sec, sys.Ctim.Nsec), true
}

func ensureInitramfs(ctx context.Context, cacheDir string, k Kernel, agentBinary string) (string, error) {
	var mods []string
	var docker []Module
	if k.ModulesDir != "" {
		var err error
		mods, err = ModuleClosure(k.ModulesDir, BootModules)
		if err != nil {
			return "", fmt.Errorf("collect guest modules for kernel %s: %w", k.Release, err)
		}
		docker, err = extraModules(k.ModulesDir, DockerModules, mods)
		if err != nil {
			return "", fmt.Errorf("collect docker modules for kernel %s: %w", k.Release, err)
		}
	}
	strip := stripSignatures(k)
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", initramfsFormat)
	fmt.Fprintf(h, "strip-signatures %t\n", strip)
	inputs := append([]string{agentBinary}, mods...)
	fmt.Fprintf(h, "boot %d\n", len(mods))
	for _, m := range docker {
		inputs = append(inputs, m.Path)
		fmt.Fprintf(h, "docker %s %s\n", filepath.Base(m.Path), strings.Join(baseNames(m.Deps), " "))
	}
	for _, p := range inputs {
		sum, err := fileSHA256(p)
		if err != nil {
			return "", fmt.Errorf("hash initramfs input: %w", err)
		}
		fmt.Fprintf(h, "%s %s\n", filepath.Base(p), sum)
	}
	dir := filepath.Join(cacheDir, "initramfs")
	final := filepath.Join(dir, hex.EncodeToString(h.Sum(nil))+".cpio")
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create initramfs cache: %w", err)
	}
	unlock, err := safefile.Lock(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	safefile.RemoveTemps(dir, ".tmp-")
	f, err := os.CreateTemp(dir, ".tmp-initramfs-*")
	if err != nil {
		return "", fmt.Errorf("create initramfs: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := writeInitramfs(ctx, bw, agentBinary, mods, docker, strip); err != nil {
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := f.Chmod(0o444); err != nil {
		return "", fmt.Errorf("chmod initramfs: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return "", fmt.Errorf("move initramfs into cache: %w", err)
	}
	return final, nil
}

// extraModules returns ModuleGraph(modulesDir, names) without the modules
// in have, and without them among the dependencies.
func extraModules(modulesDir string, names, have []string) ([]Module, error) {
	all, err := ModuleGraph(modulesDir, names)
	if err != nil {
		return nil, err
	}
	skip := map[string]bool{}
	for _, p := range have {
		skip[p] = true
	}
	var out []Module
	for _, m := range all {
		if skip[m.Path] {
			continue
		}
		var deps []string
		for _, d := range m.Deps {
			if !skip[d] {
				deps = append(deps, d)
			}
		}
		out = append(out, Module{Path: m.Path, Deps: deps})
	}
	return out, nil
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

// stripSignatures says whether k's modules are packed without their
// signatures. Checking a module's signature is the largest part of loading
// it under TCG (the boot modules load in 0.6 s instead of 0.9 s without),
// and it guards nothing here: the host picked the files, and a guest root
// may load unsigned modules anyway (the kernel only taints itself). Only
// Debian's kernel, known not to enforce signatures, gets them stripped; a
// user's or the host's kernel might (CONFIG_MODULE_SIG_FORCE).
func stripSignatures(k Kernel) bool {
	return strings.HasPrefix(k.Source, SourceDebianPackage+":")
}

// moduleSigMagic ends a signed module file: the module, the signature,
// a 12-byte struct module_signature (sig_len, big-endian, in its last 4
// bytes), then this magic.
const moduleSigMagic = "~Module signature appended~\n"

// stripModuleSignature returns the module in b without its appended
// signature; b unchanged when it has none.
func stripModuleSignature(b []byte) []byte {
	const info = 12
	n := len(b) - len(moduleSigMagic)
	if n < info || string(b[n:]) != moduleSigMagic {
		return b
	}
	sigLen := int(binary.BigEndian.Uint32(b[n-4 : n]))
	if sigLen > n-info {
		return b
	}
	return b[:n-info-sigLen]
}

func writeInitramfs(ctx context.Context, w io.Writer, agentBinary string, mods []string, docker []Module, strip bool) error {
	c := &newcWriter{w: w}
	for _, d := range initramfsDirs {
		if err := c.entry(d, cpioDir|0o755, 0, 0, 0); err != nil {
			return err
		}
	}
	if err := c.entry("/dev/console", cpioChar|0o600, 0, 5, 1); err != nil {
		return err
	}
	addFile := func(name, src string, perm uint32) error {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		return c.file(name, perm, st.Size(), f)
	}
	addModule := func(name, src string) error {
		if !strip {
			return addFile(name, src, 0o644)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		b = stripModuleSignature(b)
		return c.file(name, 0o644, int64(len(b)), bytes.NewReader(b))
	}
	if err := addFile("/init", agentBinary, 0o755); err != nil {
		return fmt.Errorf("add agent as /init: %w", err)
	}
	var order strings.Builder
	for _, m := range mods {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := InitramfsModulesDir + "/" + filepath.Base(m)
		if err := addModule(name, m); err != nil {
			return fmt.Errorf("add module: %w", err)
		}
		order.WriteString(name + "\n")
	}
	o := order.String()
	if err := c.file(InitramfsModulesOrder, 0o644, int64(len(o)), strings.NewReader(o)); err != nil {
		return err
	}
	var dorder strings.Builder
	for _, m := range docker {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := InitramfsModulesDir + "/" + filepath.Base(m.Path)
		if err := addModule(name, m.Path); err != nil {
			return fmt.Errorf("add module: %w", err)
		}
		dorder.WriteString(name)
		for _, d := range m.Deps {
			dorder.WriteString(" " + InitramfsModulesDir + "/" + filepath.Base(d))
		}
		dorder.WriteString("\n")
	}
	d := dorder.String()
	if err := c.file(InitramfsDockerModules, 0o644, int64(len(d)), strings.NewReader(d)); err != nil {
		return err
	}
	return c.close()
}
