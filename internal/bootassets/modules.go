package bootassets

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// BootModules are the modules every sandbox guest loads: the virtio-mmio
// transport and devices of the microvm machine, 9p and virtio-fs (which
// brings fuse) for shared folders and
// ext4 for the root disk. Nothing else is loaded at boot: the guest's
// network setup needs no netfilter (the policy is enforced on the host),
// and overlay is only Docker's (DockerModules). ModuleClosure adds their
// dependencies.
var BootModules = []string{
	"virtio_mmio",
	"virtio_console",
	"virtio_blk",
	"virtio_net",
	"virtio_rng",
	"9pnet_virtio",
	"9p",
	"virtiofs",
	"crc32c_generic",
	"ext4",
}

// DockerModules are the modules Docker Engine needs in the guest: bridge
// networking (bridge, br_netfilter, veth), NAT and filtering through
// iptables' nf_tables backend (nft_compat carries the xt_ matches and
// targets dockerd's rules use) and the legacy iptables tables for images
// that switch to them, plus overlay for its storage driver. They are packed
// apart from the boot set and loaded only in sandboxes that run Docker;
// ModuleClosure adds their dependencies.
var DockerModules = []string{
	"overlay",
	"bridge",
	"br_netfilter",
	"veth",
	"nf_conntrack",
	"nf_nat",
	"nf_tables",
	"nft_compat",
	"nft_chain_nat",
	"nft_nat",
	"nft_masq",
	"nft_ct",
	"xt_MASQUERADE",
	"xt_addrtype",
	"xt_conntrack",
	"xt_nat",
	"xt_tcpudp",
	"xt_mark",
	"ip_tables",
	"iptable_nat",
	"iptable_filter",
}

// Module is one module file of a closure.
type Module struct {
	// Path is the absolute path of the .ko file.
	Path string
	// Deps are the paths of the modules it needs, all earlier in the
	// closure or built in (then left out).
	Deps []string
}

// ErrCompressedModule is returned for modules shipped as .ko.xz or .ko.zst,
// which ModuleClosure does not unpack yet.
var ErrCompressedModule = errors.New("compressed kernel modules are not supported yet")

// ErrModuleNotFound is returned when a module is neither a file under the
// modules directory nor built into the kernel.
var ErrModuleNotFound = errors.New("kernel module not found")

// normModule makes a module name canonical: the kernel treats '-' and '_'
// in module names as the same character.
func normModule(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}

// moduleName returns the module name of a file name, or "" if it is not a
// module file.
func moduleName(file string) string {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if s, ok := strings.CutSuffix(file, ext); ok {
			return normModule(s)
		}
	}
	return ""
}

// ModuleClosure resolves names (dashes and underscores alike) to module
// files under modulesDir/kernel and adds, recursively, the modules each one
// names in the depends= field of its .modinfo ELF section. It returns
// absolute paths in load order: every module after all of its
// dependencies, each once. Modules listed in modulesDir/modules.builtin are
// built into the kernel and skipped silently. Errors: ErrModuleNotFound
// for an unknown name, ErrCompressedModule for .ko.xz/.ko.zst files, and a
// plain error for unreadable files or a dependency cycle.
func ModuleClosure(modulesDir string, names []string) ([]string, error) {
	mods, err := ModuleGraph(modulesDir, names)
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(mods))
	for i, m := range mods {
		paths[i] = m.Path
	}
	return paths, nil
}

// ModuleGraph is ModuleClosure with each module's direct dependencies, so
// modules whose dependencies are loaded can be loaded in parallel.
func ModuleGraph(modulesDir string, names []string) ([]Module, error) {
	builtin, err := readBuiltin(filepath.Join(modulesDir, "modules.builtin"))
	if err != nil {
		return nil, err
	}
	index, err := moduleIndex(modulesDir)
	if err != nil {
		return nil, err
	}

	var order []Module
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = normModule(name)
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		path, ok := index[name]
		if !ok {
			if builtin[name] {
				state[name] = done
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("%w: %s (needed by %s) in %s", ErrModuleNotFound, name, chain[len(chain)-1], modulesDir)
			}
			return fmt.Errorf("%w: %s in %s", ErrModuleNotFound, name, modulesDir)
		}
		if !strings.HasSuffix(path, ".ko") {
			return fmt.Errorf("%w: %s (a kernel whose modules are plain .ko files is needed)", ErrCompressedModule, path)
		}
		state[name] = visiting
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		var depPaths []string
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
			if p, ok := index[normModule(d)]; ok {
				depPaths = append(depPaths, p)
			}
		}
		state[name] = done
		order = append(order, Module{Path: path, Deps: depPaths})
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// readBuiltin returns the module names in a modules.builtin file
// (lines like kernel/fs/ext4/ext4.ko). A missing file means none.
func readBuiltin(path string) (map[string]bool, error) {
	m := map[string]bool{}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read builtin modules: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n := moduleName(filepath.Base(strings.TrimSpace(sc.Text()))); n != "" {
			m[n] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read builtin modules: %w", err)
	}
	return m, nil
}

// moduleDepends returns the depends= list of a .ko file's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo of %s: %w", path, err)
	}
	var deps []string
	for field := range bytes.SplitSeq(data, []byte{0}) {
		v, ok := bytes.CutPrefix(field, []byte("depends="))
		if !ok {
			continue
		}
		for d := range strings.SplitSeq(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, d)
			}
		}
	}
	return deps, nil
}

// moduleIndexes memoises moduleIndex per folder for the life of the
// process: one command resolves the modules more than once, and a walk of
// a kernel's module tree (thousands of files) costs tens of milliseconds.
var moduleIndexes sync.Map // modulesDir -> map[string]string

// moduleIndex maps each module name under modulesDir/kernel to its path
// (the first found).
func moduleIndex(modulesDir string) (map[string]string, error) {
	if v, ok := moduleIndexes.Load(modulesDir); ok {
		return v.(map[string]string), nil
	}
	index := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modulesDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if n := moduleName(d.Name()); n != "" {
			if _, dup := index[n]; !dup {
				index[n] = p
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", modulesDir, err)
	}
	moduleIndexes.Store(modulesDir, index)
	return index, nil
}
