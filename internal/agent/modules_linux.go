package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DockerModulesOrder lists the kernel modules Docker needs beyond the boot
// set: one module a line, its path followed by the paths of the modules of
// the list it depends on. The initramfs builder provides it.
const DockerModulesOrder = "/lib/sbx/docker-modules.order"

// moduleSet is a set of kernel modules opened before the initramfs is
// emptied, so they can be loaded later from the open files; the memory
// they hold is freed when the set is loaded or released.
type moduleSet struct {
	mu   sync.Mutex
	mods []heldModule // guarded by mu; nil once loaded or released
}

type heldModule struct {
	path string
	f    *os.File
	deps []int // indexes of earlier modules of the set
}

// openModuleSet opens every module listed in orderFile. A missing list is
// an empty set; a module that cannot be opened is logged and left out.
func openModuleSet(log *slog.Logger, orderFile string) (*moduleSet, error) {
	b, err := os.ReadFile(orderFile)
	if errors.Is(err, os.ErrNotExist) {
		return &moduleSet{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read module list: %w", err)
	}
	ms, index := &moduleSet{}, map[string]int{}
	for l := range strings.Lines(string(b)) {
		f := strings.Fields(l)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		file, err := os.Open(f[0])
		if err != nil {
			log.Warn("open module", "module", f[0], "err", err)
			continue
		}
		m := heldModule{path: f[0], f: file}
		for _, d := range f[1:] {
			if i, ok := index[d]; ok {
				m.deps = append(m.deps, i)
			}
		}
		index[f[0]] = len(ms.mods)
		ms.mods = append(ms.mods, m)
	}
	return ms, nil
}

// len is the number of modules still held.
func (ms *moduleSet) len() int {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return len(ms.mods)
}

// load loads every module of the set, each as soon as its dependencies are
// loaded, in parallel, and releases the files. Failures are logged and
// counted; a module whose dependency failed is still tried (the kernel then
// reports the missing symbols). A second call loads nothing.
func (ms *moduleSet) load(log *slog.Logger) (loaded, failed int) {
	ms.mu.Lock()
	mods := ms.mods
	ms.mods = nil
	ms.mu.Unlock()
	if len(mods) == 0 {
		return 0, 0
	}
	start := time.Now()
	done := make([]chan struct{}, len(mods))
	for i := range done {
		done[i] = make(chan struct{})
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, m := range mods {
		wg.Go(func() {
			defer close(done[i])
			defer m.f.Close()
			for _, d := range m.deps {
				<-done[d]
			}
			err := finitModule(m.f, m.path)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				log.Warn("load module", "module", m.path, "err", err)
				return
			}
			loaded++
		})
	}
	wg.Wait()
	log.Info("modules loaded", "set", "docker", "loaded", loaded, "failed", failed, "duration", time.Since(start))
	return loaded, failed
}

// release closes the files without loading them.
func (ms *moduleSet) release() {
	ms.mu.Lock()
	mods := ms.mods
	ms.mods = nil
	ms.mu.Unlock()
	for _, m := range mods {
		m.f.Close()
	}
}

// finitModule loads the module in f (named path, whose suffix tells
// whether it is compressed); a module already loaded is no error.
func finitModule(f *os.File, path string) error {
	flags := 0
	if strings.HasSuffix(path, ".xz") || strings.HasSuffix(path, ".zst") || strings.HasSuffix(path, ".gz") {
		flags = moduleCompressedFile
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = unix.FinitModule(int(fd), "", flags) }); err != nil {
		return err
	}
	if errors.Is(lerr, unix.EEXIST) {
		return nil
	}
	return lerr
}
