// Package paths resolves where sbx keeps its state, configuration, cache and
// runtime sockets, and is the one place that reads the environment knobs that
// move them.
//
// Layout (see docs/state-layout.md):
//
//	data     $SBX_HOME or $XDG_DATA_HOME/sbx       sandboxes/<id>/...
//	config   $SBX_HOME or $XDG_CONFIG_HOME/sbx     (policy, secrets later)
//	cache    $SBX_CACHE_DIR or $XDG_CACHE_HOME/sbx kernel, initramfs, templates, probes
//	runtime  $XDG_RUNTIME_DIR/sbx or /tmp/sbx-<uid> <id>/control.sock, agent.sock
//
// SBX_HOME moves data and config but never the cache, so tests with a fresh
// SBX_HOME share the downloaded kernel and built templates.
package paths

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// MaxSocketPath is the longest unix socket path Linux accepts (sun_path is
// 108 bytes including the terminating NUL).
const MaxSocketPath = 107

// Dirs holds the resolved folders. All are absolute.
type Dirs struct {
	Data    string
	Config  string
	Cache   string
	Runtime string
}

// Knob is one environment variable sbx reads. Every variable is listed in
// Knobs so `sbx diagnose` can print them.
type Knob struct {
	Name string
	Help string
}

// Knobs lists every environment variable sbx reads.
var Knobs = []Knob{
	{"SBX_HOME", "folder for sandbox state and configuration (overrides XDG_DATA_HOME and XDG_CONFIG_HOME)"},
	{"SBX_CACHE_DIR", "folder for kernels, initramfs images and templates (default $XDG_CACHE_HOME/sbx)"},
	{"SBX_KERNEL", "guest kernel (vmlinux or vmlinuz) to use instead of Debian's package"},
	{"SBX_KERNEL_MODULES", "modules folder (lib/modules/<release>) that goes with SBX_KERNEL"},
	{"SBX_QEMU", "path of qemu-system-x86_64"},
	{"SBX_VIRTIOFSD", "path of the virtio-fs server (virtiofsd) workspaces are served by on cold boots, or none for 9p (default: virtiofsd on PATH, /usr/libexec/virtiofsd, /usr/lib/qemu/virtiofsd)"},
	{"SBX_AGENT", "path of the sbx-agent binary (default: next to the sbx binary)"},
	{"SBX_HOSTS_FILE", "hosts-format file whose names override upstream DNS for sandboxes (may map to loopback; used by tests)"},
	{"SBX_DEBUG", "set to 1 to show error causes and boot phases"},
	{"SBX_MAX_FLOWS", "most TCP connections one sandbox may have open at once, every path counted (default 1024)"},
	{"SBX_MAX_DNS", "most DNS lookups one sandbox may have in flight at once (default 64)"},
}

// Getenv returns the value of a registered knob. It panics for an
// unregistered name so every knob stays listed.
func Getenv(name string) string {
	for _, k := range Knobs {
		if k.Name == name {
			return os.Getenv(name)
		}
	}
	panic("paths: unregistered environment knob " + name)
}

// Resolve computes the folders from the environment. It does not create them.
func Resolve() (Dirs, error) {
	home, _ := os.UserHomeDir()
	xdg := func(env, fallback string) (string, error) {
		if v := os.Getenv(env); v != "" {
			return filepath.Abs(v)
		}
		if home == "" {
			return "", fmt.Errorf("cannot find the home folder; set %s or SBX_HOME", env)
		}
		return filepath.Join(home, fallback), nil
	}
	var d Dirs
	if h := os.Getenv("SBX_HOME"); h != "" {
		abs, err := filepath.Abs(h)
		if err != nil {
			return d, fmt.Errorf("resolve SBX_HOME: %w", err)
		}
		d.Data = abs
		d.Config = filepath.Join(abs, "config")
	} else {
		data, err := xdg("XDG_DATA_HOME", ".local/share")
		if err != nil {
			return d, err
		}
		conf, err := xdg("XDG_CONFIG_HOME", ".config")
		if err != nil {
			return d, err
		}
		d.Data = filepath.Join(data, "sbx")
		d.Config = filepath.Join(conf, "sbx")
	}
	if c := os.Getenv("SBX_CACHE_DIR"); c != "" {
		abs, err := filepath.Abs(c)
		if err != nil {
			return d, fmt.Errorf("resolve SBX_CACHE_DIR: %w", err)
		}
		d.Cache = abs
	} else {
		cache, err := xdg("XDG_CACHE_HOME", ".cache")
		if err != nil {
			return d, err
		}
		d.Cache = filepath.Join(cache, "sbx")
	}
	if r := os.Getenv("XDG_RUNTIME_DIR"); r != "" {
		d.Runtime = filepath.Join(r, "sbx")
	} else {
		d.Runtime = filepath.Join(os.TempDir(), "sbx-"+strconv.Itoa(os.Getuid()))
	}
	return d, nil
}

// SandboxesDir is the folder that holds one folder per sandbox.
func (d Dirs) SandboxesDir() string { return filepath.Join(d.Data, "sandboxes") }

// SandboxDir is the state folder of sandbox id.
func (d Dirs) SandboxDir(id string) string { return filepath.Join(d.SandboxesDir(), id) }

// RuntimeDir is the short folder holding the sockets of sandbox id.
func (d Dirs) RuntimeDir(id string) string { return filepath.Join(d.Runtime, id) }

// EnsureRuntimeDir creates the runtime folder of sandbox id (mode 0700) and
// checks that the longest socket path in it fits in a sockaddr_un. Both
// the runtime folder and the sandbox's must be real folders (not links)
// of the caller's, writable by nobody else: in /tmp (no XDG_RUNTIME_DIR, as
// under sudo) another user could make either first and swap the sockets.
func (d Dirs) EnsureRuntimeDir(id string) (string, error) {
	if err := PrivateDir(d.Runtime); err != nil {
		return "", err
	}
	dir := d.RuntimeDir(id)
	if n := len(filepath.Join(dir, "control.sock")); n > MaxSocketPath {
		return "", fmt.Errorf("socket path %s is %d bytes, over the %d-byte limit of unix sockets; set XDG_RUNTIME_DIR to a shorter folder", filepath.Join(dir, "control.sock"), n, MaxSocketPath)
	}
	if err := PrivateDir(dir); err != nil {
		return "", err
	}
	return dir, nil
}

// UnsafeDirError is PrivateDir's refusal of a folder that another user
// could change (and so swap what is in it).
type UnsafeDirError struct {
	Dir string
	// Problem is what is wrong: "is not a folder (a link?)", "belongs to
	// another user (uid 0)", "is writable by other users (mode ...)".
	Problem string
	// Shared reports a folder every user may write (world-writable with
	// the sticky bit, as /tmp): it is meant to be shared, so it is never
	// to be chmodded, removed or given to sbx, only avoided.
	Shared bool
	// fix is what to do about it in the runtime folder's case.
	fix string
}

func (e *UnsafeDirError) Error() string {
	return "runtime folder " + e.Dir + " " + e.Problem + "; " + e.fix
}

// PrivateDir makes dir (mode 0700) unless it exists, and checks that it
// is a folder, not a link, of the caller's, that nobody else can write
// (so nobody else can swap what is in it; the sockets in it are 0600 or
// need write permission to connect). A folder that fails the check comes
// back as an *UnsafeDirError.
func PrivateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create runtime folder: %w", err)
		}
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	const elsewhere = "set XDG_RUNTIME_DIR to a folder of yours"
	if !st.IsDir() {
		return &UnsafeDirError{Dir: dir, Problem: "is not a folder (a link?)", fix: "remove it, or " + elsewhere}
	}
	shared := st.Mode()&os.ModeSticky != 0 && st.Mode().Perm()&0o002 != 0
	if shared {
		// /tmp and its kind: chmod or rm would break the machine.
		return &UnsafeDirError{Dir: dir, Problem: fmt.Sprintf("is shared by all users (mode %v)", st.Mode()), Shared: true,
			fix: "sbx needs a folder of its own inside it; " + elsewhere}
	}
	if owner, ok := ownerUID(st); !ok || owner != os.Geteuid() {
		return &UnsafeDirError{Dir: dir, Problem: fmt.Sprintf("belongs to another user (uid %d)", owner), fix: "remove it, or " + elsewhere}
	}
	if st.Mode().Perm()&0o022 != 0 {
		return &UnsafeDirError{Dir: dir, Problem: fmt.Sprintf("is writable by other users (mode %v)", st.Mode().Perm()), fix: "chmod 700 it, or " + elsewhere}
	}
	return nil
}
