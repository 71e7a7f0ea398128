package snapshot

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/internal/disk"
	"github.com/sbx-dev/sbx/internal/safefile"
	"github.com/sbx-dev/sbx/internal/vm"
)

// Shares is the number of workspace share slots of a snapshot VM. A
// sandbox with more workspaces cold-boots.
const Shares = 4

// layoutVersion changes whenever VMConfig's device set does.
const layoutVersion = 2

// DockerSerial is the serial of the Docker disk slot.
const DockerSerial = "sbx-docker"

// Files of a snapshot folder.
const (
	metaFile    = "meta.json"
	diskFile    = "disk.qcow2"
	stateFile   = "state"
	ramFile     = "ram"
	consoleFile = "console.log"
	emptyDir    = "empty"
)

// retryAfter is how long a failed save is not tried again: a start that
// cannot use a snapshot boots cold rather than pay for a failing save
// each time.
const retryAfter = time.Hour

// ErrNotEligible says a sandbox cannot start from a snapshot; the message
// says why.
var ErrNotEligible = errors.New("not eligible for a snapshot start")

// Spec is everything a saved VM depends on.
type Spec struct {
	QEMU        string   `json:"qemu"`
	QEMUVersion string   `json:"qemuVersion"`
	Kernel      string   `json:"kernel"`
	Initrd      string   `json:"initrd"`
	Cmdline     string   `json:"cmdline"`
	Accel       vm.Accel `json:"accel"`
	TSCkHz      int      `json:"tscKHz"`
	CPUs        int      `json:"cpus"`
	MemoryMiB   int      `json:"memoryMiB"`
	// DiskBytes is the root disk's virtual size (the guest grew its file
	// system to it before the save).
	DiskBytes int64 `json:"diskBytes"`
	// DockerDiskBytes is the Docker disk's size; 0 means no Docker disk.
	DockerDiskBytes int64  `json:"dockerDiskBytes"`
	TemplateName    string `json:"templateName"`
	TemplateID      string `json:"templateID"`
	TemplateImage   string `json:"templateImage"`
	// VMMUID and VMMGID are the ids the VMM ran as (vm.DefaultJail): a
	// resumed VM opens the memory file read-write, so each VMM user has
	// snapshots of its own.
	VMMUID int `json:"vmmUID"`
	VMMGID int `json:"vmmGID"`
}

// parts lists the key's inputs by what a person calls them, for the
// reason a snapshot was rebuilt.
func (s Spec) parts() map[string]string {
	return map[string]string{
		"qemu":         s.QEMU + " " + s.QEMUVersion + " " + fileStamp(s.QEMU),
		"kernel":       s.Kernel + " " + fileStamp(s.Kernel),
		"initramfs":    s.Initrd + " " + fileStamp(s.Initrd),
		"command line": s.Cmdline,
		"accelerator":  string(s.Accel),
		// Rounded: read from /proc/cpuinfo (without the kernel log) it
		// wavers, and the guest's clock rate was fixed at the save.
		"TSC frequency": strconv.Itoa((s.TSCkHz+5000)/10000) + "0 MHz",
		"vm size":       fmt.Sprintf("%d cpus %d MiB disk %d docker %d", s.CPUs, s.MemoryMiB, s.DiskBytes, s.DockerDiskBytes),
		"template":      s.TemplateID,
		"layout":        strconv.Itoa(layoutVersion) + " " + strconv.Itoa(Shares),
		"host cpu":      hostCPU(s.Accel),
		"vmm user":      fmt.Sprintf("%d:%d", s.VMMUID, s.VMMGID),
	}
}

// hostCPU identifies the host CPU and kernel under KVM, where the guest
// runs with -cpu host and has set itself up for the host's CPU features:
// a saved guest must not resume on another CPU (a shared cache, a
// microcode or kernel update). TCG emulates -cpu max, which the QEMU
// version already pins.
func hostCPU(accel vm.Accel) string {
	if accel != vm.AccelKVM {
		return "emulated"
	}
	return hostCPUOnce()
}

var hostCPUOnce = sync.OnceValue(func() string {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	b, _ := os.ReadFile("/proc/cpuinfo")
	var model, flags, microcode string
	for l := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "model name":
			model = cmp.Or(model, v)
		case "flags":
			flags = cmp.Or(flags, v)
		case "microcode":
			microcode = cmp.Or(microcode, v)
		}
	}
	return hashOf(model, flags, microcode, unix.ByteSliceToString(uts.Release[:]))[:16]
})

// family identifies the snapshots one sandbox shape of one template has
// had over time: a newer one supersedes the older.
func (s Spec) family() string {
	return hashOf(s.TemplateName, string(s.Accel), strconv.Itoa(s.CPUs), strconv.Itoa(s.MemoryMiB),
		strconv.FormatInt(s.DiskBytes, 10), strconv.FormatInt(s.DockerDiskBytes, 10))
}

// Key is the snapshot's name: a hash of every input.
func (s Spec) Key() string {
	p := s.parts()
	names := make([]string, 0, len(p))
	for k := range p {
		names = append(names, k)
	}
	sort.Strings(names)
	vals := make([]string, 0, 2*len(names))
	for _, n := range names {
		vals = append(vals, n, p[n])
	}
	return hashOf(vals...)[:32]
}

func hashOf(vals ...string) string {
	h := sha256.New()
	for _, v := range vals {
		fmt.Fprintf(h, "%d:%s\n", len(v), v)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fileStamp identifies a file's version without reading it: size, mtime,
// inode.
func fileStamp(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d@%d#%d", st.Size(), st.ModTime().UnixNano(), inode(st))
}

// Devices are the host ends of one VM's devices.
type Devices struct {
	Name       string
	RootDisk   string // qcow2
	DockerDisk string // raw; needed when the spec has a Docker disk
	// Workspaces are shared in order, as tags ws0, ws1, ...; at most
	// Shares. Their Tag fields are ignored.
	Workspaces  []vm.Share
	Empty       string // an empty folder the unused slots export
	NetSocket   string
	MAC         string
	AgentSocket string
	Monitor     string
	ConsoleLog  string
	// MemoryFile backs guest RAM: the snapshot VM writes its RAM there
	// (MemoryShared), a resumed VM maps it copy-on-write.
	MemoryFile   string
	MemoryShared bool
}

// ShareTag is the 9p tag of share slot i.
func ShareTag(i int) string { return "ws" + strconv.Itoa(i) }

// VMConfig is the configuration of a VM in the snapshot layout: the one
// the snapshot VM boots with and each restored sandbox resumes with.
func VMConfig(s Spec, d Devices) (vm.Config, error) {
	if len(d.Workspaces) > Shares {
		return vm.Config{}, fmt.Errorf("%w: %d workspaces, and a snapshot has %d share slots", ErrNotEligible, len(d.Workspaces), Shares)
	}
	if s.DockerDiskBytes > 0 && d.DockerDisk == "" {
		return vm.Config{}, errors.New("snapshot layout: the spec has a docker disk and the devices none")
	}
	c := vm.Config{
		Name:        d.Name,
		Kernel:      s.Kernel,
		Initrd:      s.Initrd,
		Cmdline:     s.Cmdline,
		CPUs:        s.CPUs,
		MemoryMiB:   s.MemoryMiB,
		Accel:       s.Accel,
		TSCkHz:      s.TSCkHz,
		Disks:       []vm.Disk{{Path: d.RootDisk, Format: "qcow2"}},
		Net:         &vm.Net{Socket: d.NetSocket, MAC: d.MAC},
		AgentSocket: d.AgentSocket,
		Monitor:     d.Monitor,
		ConsoleLog:  d.ConsoleLog,
		MemoryFile:  d.MemoryFile,
		// Written only by the snapshot VM.
		MemoryShared: d.MemoryShared,
		Jail:         vm.DefaultJail(s.VMMUID, s.VMMGID),
	}
	// The snapshot VM's disk is an overlay of the template image.
	c.Jail.Backing = []string{filepath.Dir(s.TemplateImage)}
	if s.DockerDiskBytes > 0 {
		c.Disks = append(c.Disks, vm.Disk{Path: d.DockerDisk, Format: "raw", Serial: DockerSerial})
	}
	for i := range Shares {
		if i < len(d.Workspaces) {
			w := d.Workspaces[i]
			c.Shares = append(c.Shares, vm.Share{Tag: ShareTag(i), Path: w.Path, ReadOnly: w.ReadOnly})
			continue
		}
		c.Shares = append(c.Shares, vm.Share{Tag: ShareTag(i), Path: d.Empty, ReadOnly: true})
	}
	return c, nil
}

// Snapshot is a saved VM in the cache.
type Snapshot struct {
	Key string
	Dir string
	// Disk is the root disk at save time: the backing file of each new
	// sandbox's disk.
	Disk string
	// State is the saved VM state, for vm.Config.RestoreFrom, without
	// RAM.
	State string
	// RAM is the guest's memory at save time (vm.Config.MemoryFile).
	RAM string
	// Empty is the folder unused share slots export.
	Empty string
	// Console is the snapshot VM's console log (its boot).
	Console string
	Meta    Meta
}

// Meta is meta.json.
type Meta struct {
	Key     string            `json:"key"`
	Family  string            `json:"family"`
	Spec    Spec              `json:"spec"`
	Parts   map[string]string `json:"parts"`
	Created time.Time         `json:"created"`
	// BootMS and SaveMS are how long the snapshot VM took to boot and to
	// be saved; StateBytes is the size of the state file.
	BootMS     int64 `json:"bootMS"`
	SaveMS     int64 `json:"saveMS"`
	StateBytes int64 `json:"stateBytes"`
	// RAMBytes is the space the RAM file takes (it is sparse).
	RAMBytes int64 `json:"ramBytes"`
}

// Dir is the snapshots folder of a cache.
func Dir(cacheDir string) string { return filepath.Join(cacheDir, "snapshots") }

// Backing lists the folders of cacheDir whose images a VM's disk may
// name as its backing file (vm.Jail.Backing): the template images and
// the snapshots.
func Backing(cacheDir string) []string {
	return []string{filepath.Join(cacheDir, "templates"), Dir(cacheDir)}
}

func open(dir, key string) (*Snapshot, error) {
	d := filepath.Join(dir, key)
	b, err := os.ReadFile(filepath.Join(d, metaFile))
	if err != nil {
		return nil, err
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", key, err)
	}
	if m.Key != key {
		return nil, fmt.Errorf("snapshot %s: meta.json names %s", key, m.Key)
	}
	s := &Snapshot{Key: key, Dir: d, Disk: filepath.Join(d, diskFile), State: filepath.Join(d, stateFile),
		RAM: filepath.Join(d, ramFile), Empty: filepath.Join(d, emptyDir), Console: filepath.Join(d, consoleFile), Meta: m}
	for _, p := range []string{s.Disk, s.State, s.RAM, s.Empty} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("snapshot %s is incomplete: %w", key, err)
		}
	}
	return s, nil
}

// DiskOf is the path of snapshot key's disk, which backs the disks of the
// sandboxes made from it.
func DiskOf(cacheDir, key string) string { return filepath.Join(Dir(cacheDir), key, diskFile) }

// Lookup returns the snapshot with key, if it is complete.
func Lookup(cacheDir, key string) (*Snapshot, error) { return open(Dir(cacheDir), key) }

// Existing returns spec's snapshot when it has been saved, held by a
// pending lease like Ensure's, without the lock or a build.
func Existing(cacheDir string, spec Spec) (*Snapshot, error) {
	dir := Dir(cacheDir)
	key := spec.Key()
	s, err := open(dir, key)
	if err != nil {
		return nil, err
	}
	return s, pendingLease(dir, key)
}

// Options of Ensure.
type Options struct {
	// QEMUImg is the qemu-img binary.
	QEMUImg string
	// Backend boots the snapshot VM.
	Backend vm.Backend
	// Progress receives one line per step for people (may be nil).
	Progress io.Writer
	Log      *slog.Logger
}

// Ensure returns the snapshot for spec, building it first when there is
// none (which boots a VM: seconds under TCG). A failed build is recorded
// and not tried again for the same key; the error says so.
func Ensure(ctx context.Context, cacheDir string, spec Spec, o Options) (*Snapshot, error) {
	dir := Dir(cacheDir)
	key := spec.Key()
	// The common case takes no lock: a build of another snapshot holds it
	// for a whole boot. The pending lease keeps this one from collection
	// until the caller's own lease exists.
	if s, err := open(dir, key); err == nil {
		return s, pendingLease(dir, key)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshot cache: %w", err)
	}
	unlock, err := safefile.Lock(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	safefile.RemoveTemps(dir, ".tmp-")
	// Whatever is returned is held by a pending lease until the caller's
	// own (Lease) exists, so no collection removes it in between.
	if s, err := open(dir, key); err == nil {
		return s, pendingLease(dir, key)
	}
	failed := filepath.Join(dir, key+".failed")
	if st, err := os.Stat(failed); err == nil && time.Since(st.ModTime()) < retryAfter {
		b, _ := os.ReadFile(failed)
		return nil, fmt.Errorf("saving it failed at %s: %s (tried again after %s, or now if you remove %s)",
			st.ModTime().Format(time.TimeOnly), strings.TrimSpace(string(b)), st.ModTime().Add(retryAfter).Format(time.TimeOnly), failed)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if why := supersedes(dir, spec); why != "" {
		o.Log.Info("rebuilding the template's snapshot", "component", "snapshot", "template", spec.TemplateName, "reason", why)
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "Snapshot of template %s is out of date (%s); saving a new one\n", spec.TemplateName, why)
		}
	} else if o.Progress != nil {
		fmt.Fprintf(o.Progress, "Saving a booted snapshot of template %s for fast starts (once for this template and size)\n", spec.TemplateName)
	}
	s, err := build(ctx, dir, key, spec, o)
	if err != nil {
		if ctx.Err() == nil {
			_ = safefile.Write(failed, []byte(err.Error()+"\n"), 0o600)
		}
		return nil, err
	}
	os.Remove(failed)
	if err := pendingLease(dir, key); err != nil {
		return nil, err
	}
	collect(dir, nil)
	return s, nil
}

// supersedes says what changed since the newest snapshot of spec's
// family, or "" when there is none.
func supersedes(dir string, spec Spec) string {
	var newest *Meta
	for _, m := range metas(dir) {
		if m.Family == spec.family() && (newest == nil || m.Created.After(newest.Created)) {
			newest = &m
		}
	}
	if newest == nil {
		return ""
	}
	return Changed(spec, *newest)
}

// Changed says which inputs of spec differ from those snapshot m was
// saved with ("kernel, initramfs changed").
func Changed(spec Spec, m Meta) string {
	var changed []string
	for k, v := range spec.parts() {
		if m.Parts[k] != v {
			changed = append(changed, k)
		}
	}
	sort.Strings(changed)
	if len(changed) == 0 {
		return "nothing changed"
	}
	return strings.Join(changed, ", ") + " changed"
}

func metas(dir string) []Meta {
	ents, _ := os.ReadDir(dir)
	var out []Meta
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if s, err := open(dir, e.Name()); err == nil {
			out = append(out, s.Meta)
		}
	}
	return out
}

// build boots a VM in the snapshot layout, waits for its agent to open
// its port, saves it, and publishes the folder.
func build(ctx context.Context, dir, key string, spec Spec, o Options) (*Snapshot, error) {
	tmp, err := os.MkdirTemp(dir, ".tmp-"+key+"-")
	if err != nil {
		return nil, err
	}
	published := false
	defer func() {
		if !published {
			os.RemoveAll(tmp)
		}
	}()
	final := filepath.Join(dir, key)
	// The disk is made at its final path's sibling and renamed with the
	// folder: its backing file (the template image) is an absolute path.
	if err := disk.CreateOverlay(ctx, o.QEMUImg, spec.TemplateImage, "raw", filepath.Join(tmp, diskFile), spec.DiskBytes); err != nil {
		return nil, err
	}
	if err := os.Mkdir(filepath.Join(tmp, emptyDir), 0o555); err != nil {
		return nil, err
	}
	var dockerDisk string
	if spec.DockerDiskBytes > 0 {
		// A blank stand-in of the right size: the guest only reads its
		// first blocks (partition scan) before the save, and drops them
		// before mounting the sandbox's real one.
		dockerDisk = filepath.Join(tmp, "docker.img")
		f, err := os.OpenFile(dockerDisk, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		err = f.Truncate(spec.DockerDiskBytes)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	// Sockets live in a short folder of their own (unix socket paths are
	// limited to 108 bytes).
	rt, err := os.MkdirTemp("", "sbx-snap-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(rt)
	netSock := filepath.Join(rt, "net.sock")
	ln, err := net.Listen("unix", netSock)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	// The snapshot VM's network card is wired to nothing that answers:
	// frames are read and dropped. The guest configures no network before
	// the save, so none should come.
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	}()
	cfg, err := VMConfig(spec, Devices{
		Name:         "snapshot-" + key[:12],
		RootDisk:     filepath.Join(tmp, diskFile),
		DockerDisk:   dockerDisk,
		Empty:        filepath.Join(tmp, emptyDir),
		NetSocket:    netSock,
		MAC:          "02:00:00:00:00:01",
		AgentSocket:  filepath.Join(rt, "agent.sock"),
		Monitor:      filepath.Join(rt, "qmp.sock"),
		ConsoleLog:   filepath.Join(tmp, "console.log"),
		MemoryFile:   filepath.Join(tmp, ramFile),
		MemoryShared: true,
	})
	if err != nil {
		return nil, err
	}
	inst, err := o.Backend.New(ctx, cfg, o.Log)
	if err != nil {
		return nil, err
	}
	snap, ok := inst.(vm.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("the %s backend cannot save a vm", o.Backend.Name())
	}
	defer func() {
		inst.Kill()
		<-inst.Wait()
	}()
	bootCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var vmmOut vmmOutput
	start := time.Now()
	if err := inst.Start(bootCtx, &vmmOut); err != nil {
		return nil, fmt.Errorf("boot the snapshot vm: %w%s", err, vmmDetail(vmmOut.String()))
	}
	if err := snap.WaitAgentOpen(bootCtx); err != nil {
		return nil, fmt.Errorf("boot the snapshot vm: %w%s (console: %s)", err, vmmDetail(vmmOut.String()), lastLine(filepath.Join(tmp, consoleFile)))
	}
	booted := time.Since(start)
	f, err := os.OpenFile(filepath.Join(tmp, stateFile), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	saveStart := time.Now()
	err = snap.Save(bootCtx, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("save the snapshot vm: %w%s", err, vmmDetail(vmmOut.String()))
	}
	saved := time.Since(saveStart)
	inst.Kill()
	<-inst.Wait()
	// The jailed VMM owned what it wrote; the published files are sbx's
	// again, but for the memory file, which resumed VMMs of the same user
	// open read-write.
	if err := ownTree(tmp, filepath.Join(tmp, ramFile)); err != nil {
		return nil, err
	}
	// The stand-in Docker disk is not needed by restored sandboxes (each
	// has its own); the console log stays for diagnosis.
	if dockerDisk != "" {
		os.Remove(dockerDisk)
	}
	st, err := os.Stat(filepath.Join(tmp, stateFile))
	if err != nil {
		return nil, err
	}
	// Resumed VMs map the RAM file copy-on-write (MAP_PRIVATE), so they
	// never change it; QEMU 7.2 still opens it read-write, so it stays
	// writable by its owner (0600, in the 0700 cache).
	if err := os.Chmod(filepath.Join(tmp, ramFile), 0o600); err != nil {
		return nil, err
	}
	ramBytes := du(filepath.Join(tmp, ramFile))
	// Published files never change: each new sandbox's disk is an overlay
	// of disk.qcow2 and its VM resumes state; nothing opens them for
	// writing again. They reach the disk before the folder is published.
	for _, f := range []string{diskFile, stateFile, ramFile} {
		p := filepath.Join(tmp, f)
		if f != ramFile {
			if err := os.Chmod(p, 0o400); err != nil {
				return nil, err
			}
		}
		if err := syncFile(p); err != nil {
			return nil, err
		}
	}
	m := Meta{Key: key, Family: spec.family(), Spec: spec, Parts: spec.parts(), Created: time.Now().UTC(),
		BootMS: booted.Milliseconds(), SaveMS: saved.Milliseconds(), StateBytes: st.Size(), RAMBytes: ramBytes}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := safefile.Write(filepath.Join(tmp, metaFile), append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	if err := syncFile(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("publish snapshot: %w", err)
	}
	published = true
	_ = syncFile(dir)
	o.Log.Info("snapshot saved", "component", "snapshot", "key", key, "template", spec.TemplateName,
		"boot", booted.String(), "save", saved.String(), "bytes", st.Size())
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "Snapshot saved (boot %.1f s, save %.1f s, %d MiB of memory)\n", booted.Seconds(), saved.Seconds(), ramBytes>>20)
	}
	return open(dir, key)
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

func vmmDetail(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return " (qemu: " + s + ")"
}

func lastLine(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// vmmOutput keeps the first bytes QEMU prints, for error messages. QEMU's
// output is copied in by another goroutine.
type vmmOutput struct {
	mu  sync.Mutex
	buf []byte // guarded by mu
}

func (v *vmmOutput) Write(p []byte) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if room := 4096 - len(v.buf); room > 0 {
		v.buf = append(v.buf, p[:min(len(p), room)]...)
	}
	return len(p), nil
}

func (v *vmmOutput) String() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return string(v.buf)
}

// ownTree gives every file under dir but except back to this process's
// user.
func ownTree(dir, except string) error {
	uid, gid := os.Getuid(), os.Getgid()
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == except {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}
