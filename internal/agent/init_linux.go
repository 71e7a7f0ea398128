package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Paths and names Init relies on; the initramfs builder provides them.
const (
	// ModulesOrder lists kernel modules to load, one absolute path a line,
	// in load order.
	ModulesOrder = "/lib/sbx/modules.order"
	// PortName is the virtio-serial port name the host gives the agent
	// channel.
	PortName = "sbx.agent"
	sysroot  = "/sysroot"
)

// Timeouts of boot phases.
const (
	rootDeviceTimeout = 10 * time.Second
	portTimeout       = 10 * time.Second
)

// console is the log destination: the kernel console once /dev exists.
type console struct {
	mu sync.Mutex
	w  io.Writer // guarded by mu
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil {
		return len(p), nil
	}
	return c.w.Write(p)
}

func (c *console) set(w io.Writer) {
	c.mu.Lock()
	c.w = w
	c.mu.Unlock()
}

// Init is the main of sbx-agent as PID 1. It boots the guest phase by
// phase, logging each phase and its duration as JSON on the kernel console,
// then serves the agent protocol on the "sbx.agent" port until power-off.
// It never returns: a fatal error is logged and the machine powered off,
// because PID 1 exiting (or panicking) is a kernel panic.
func Init() {
	kernel, kernelOK := sinceBoot()
	con := &console{w: os.Stderr}
	log := slog.New(slog.NewJSONHandler(con, &slog.HandlerOptions{Level: slog.LevelInfo})).With("component", "agent")
	if kernelOK {
		bootPhases.add("kernel", kernel)
		log.Info("boot phase done", "phase", "kernel", "duration", kernel)
	}
	defer func() {
		if r := recover(); r != nil {
			log.Error("panic in init", "panic", fmt.Sprint(r))
			powerOff(log)
		}
	}()
	if err := boot(log, con); err != nil {
		log.Error("boot failed; powering off", "err", err)
		unix.Sync()
		powerOff(log)
	}
	powerOff(log)
}

func phase(log *slog.Logger, name string, fn func() error) error {
	start := time.Now()
	err := fn()
	if err != nil {
		log.Error("boot phase failed", "phase", name, "duration", time.Since(start), "err", err)
		return fmt.Errorf("boot phase %s: %w", name, err)
	}
	d := time.Since(start)
	bootPhases.add(name, d)
	log.Info("boot phase done", "phase", name, "duration", d)
	return nil
}

func boot(log *slog.Logger, con *console) error {
	bootStart := time.Now()
	ctx := context.Background()
	reaper := NewReaper(log, ReapAll)
	go reaper.Run(ctx)

	if err := phase(log, "early-mounts", func() error { return earlyMounts(con) }); err != nil {
		return err
	}
	if err := phase(log, "modules", func() error { return loadModules(log, ModulesOrder) }); err != nil {
		return err
	}
	var dev string
	if err := phase(log, "root-disk", func() error {
		var err error
		dev, err = mountRoot(log)
		return err
	}); err != nil {
		return err
	}
	if err := phase(log, "grow-root", func() error { return growExt4(log, dev, sysroot) }); err != nil {
		// Not fatal: the disk still works at its old size.
		log.Warn("root filesystem not grown", "err", err)
	}
	// Docker's modules are loaded only if the setup asks for Docker, which
	// comes after the initramfs is gone: keep them open until then.
	dockerMods, err := openModuleSet(log, DockerModulesOrder)
	if err != nil {
		log.Warn("docker modules unavailable", "err", err)
		dockerMods = &moduleSet{}
	}
	if err := phase(log, "switch-root", switchRoot); err != nil {
		return err
	}
	if err := phase(log, "late-mounts", lateMounts); err != nil {
		return err
	}
	var port string
	if err := phase(log, "agent-port", func() error {
		var err error
		port, err = findPort(PortName, portTimeout)
		return err
	}); err != nil {
		return err
	}
	log.Info("boot done", "duration", time.Since(bootStart), "port", port)

	guest := NewGuest(log, "/etc")
	guest.reaper = reaper
	guest.dockerMods = dockerMods
	srv, err := NewServer(Config{Log: log, Reaper: reaper, Setup: guest.Setup, PowerOff: guest.PowerOff, BaseEnv: guest.Env})
	if err != nil {
		return err
	}
	// Serve forever; a session ends when the host side goes away (say the
	// supervisor restarted), so reopen the port and serve again.
	for {
		f, err := os.OpenFile(port, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open agent port %s: %w", port, err)
		}
		err = srv.Serve(ctx, f)
		log.Warn("agent session ended; serving again", "err", err)
		time.Sleep(500 * time.Millisecond)
	}
}

func mkdirMount(source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", target, err)
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

func earlyMounts(con *console) error {
	const nosuidNoexecNodev = unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV
	steps := []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"proc", "/proc", "proc", nosuidNoexecNodev, ""},
		{"sysfs", "/sys", "sysfs", nosuidNoexecNodev, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
	}
	for _, s := range steps {
		if err := mkdirMount(s.src, s.target, s.fstype, s.flags, s.data); err != nil {
			return err
		}
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		con.set(f)
	}
	return nil
}

// moduleCompressedFile is MODULE_INIT_COMPRESSED_FILE from linux/module.h.
const moduleCompressedFile = 4

func loadModules(log *slog.Logger, orderFile string) error {
	b, err := os.ReadFile(orderFile)
	if errors.Is(err, os.ErrNotExist) {
		log.Info("no module list", "path", orderFile)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read module list: %w", err)
	}
	loaded, failed := 0, 0
	for l := range strings.Lines(string(b)) {
		p := strings.TrimSpace(l)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if err := loadModule(p); err != nil {
			failed++
			log.Warn("load module", "module", p, "err", err)
			continue
		}
		loaded++
	}
	log.Info("modules loaded", "loaded", loaded, "failed", failed)
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return finitModule(f, path)
}

// cmdlineParam returns the value of key=value on the kernel command line.
func cmdlineParam(cmdline, key string) (string, bool) {
	for _, f := range strings.Fields(cmdline) {
		if k, v, ok := strings.Cut(f, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

func mountRoot(log *slog.Logger) (string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", fmt.Errorf("read kernel command line: %w", err)
	}
	dev, ok := cmdlineParam(string(b), "sbx.root")
	if !ok {
		return "", errors.New("kernel command line has no sbx.root=DEVICE")
	}
	fstype, ok := cmdlineParam(string(b), "sbx.rootfstype")
	if !ok {
		fstype = "ext4"
	}
	deadline := time.Now().Add(rootDeviceTimeout)
	for {
		if _, err := os.Stat(dev); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("root device %s did not appear within %s (is the virtio-blk module in %s?)", dev, rootDeviceTimeout, ModulesOrder)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := mkdirMount(dev, sysroot, fstype, 0, ""); err != nil {
		return "", err
	}
	log.Info("root mounted", "device", dev, "fstype", fstype)
	return dev, nil
}

// growExt4 grows the ext4 filesystem mounted at mnt to fill dev, if dev is
// larger than the filesystem.
func growExt4(log *slog.Logger, dev, mnt string) error {
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	var sb [1024]byte
	if _, err := f.ReadAt(sb[:], 1024); err != nil {
		return fmt.Errorf("read superblock of %s: %w", dev, err)
	}
	blocks, blockSize, err := ext4Geometry(sb[:])
	if err != nil {
		return fmt.Errorf("%s: %w", dev, err)
	}
	var devBytes uint64
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&devBytes)))
		if e != 0 {
			ierr = e
		}
	}); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("size of %s: %w", dev, ierr)
	}
	want := devBytes / blockSize
	if want <= blocks {
		log.Info("root filesystem fills its disk", "blocks", blocks)
		return nil
	}
	m, err := os.Open(mnt)
	if err != nil {
		return err
	}
	defer m.Close()
	mrc, err := m.SyscallConn()
	if err != nil {
		return err
	}
	if err := mrc.Control(func(fd uintptr) {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, ext4IocResizeFS, uintptr(unsafe.Pointer(&want)))
		if e != 0 {
			ierr = e
		}
	}); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("resize ext4 on %s from %d to %d blocks: %w", mnt, blocks, want, ierr)
	}
	log.Info("root filesystem grown", "from_blocks", blocks, "to_blocks", want, "block_size", blockSize)
	return nil
}

// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64).
const ext4IocResizeFS = 0x40086610

// ext4Geometry reads the block count and block size from an ext4
// superblock (the 1024 bytes at offset 1024 of the device).
func ext4Geometry(sb []byte) (blocks, blockSize uint64, err error) {
	if len(sb) < 1024 || binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, 0, errors.New("no ext4 superblock")
	}
	blocks = uint64(binary.LittleEndian.Uint32(sb[0x4:]))
	const incompat64bit = 0x80
	if binary.LittleEndian.Uint32(sb[0x60:])&incompat64bit != 0 {
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	logSize := binary.LittleEndian.Uint32(sb[0x18:])
	if logSize > 6 {
		return 0, 0, fmt.Errorf("implausible ext4 block size 2^(10+%d)", logSize)
	}
	return blocks, 1024 << logSize, nil
}

// switchRoot makes /sysroot the root: it deletes the initramfs contents
// (without crossing into other mounts), moves the kernel filesystems into
// /sysroot, and moves /sysroot onto / and chroots there.
func switchRoot() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("statfs /: %w", err)
	}
	if st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("refusing to switch root: / is not an initramfs (fs type %#x)", st.Type)
	}
	var rootStat unix.Stat_t
	if err := unix.Lstat("/", &rootStat); err != nil {
		return fmt.Errorf("stat /: %w", err)
	}
	if err := deleteTree("/", rootStat.Dev); err != nil {
		return fmt.Errorf("delete initramfs: %w", err)
	}
	for _, m := range []string{"/dev", "/proc", "/sys", "/run"} {
		target := filepath.Join(sysroot, m)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("move %s: %w", m, err)
		}
		if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s to %s: %w", m, target, err)
		}
	}
	if err := unix.Chdir(sysroot); err != nil {
		return fmt.Errorf("chdir %s: %w", sysroot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", sysroot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// deleteTree removes everything under dir that lives on device dev,
// leaving other mounts (and the directories they are mounted on) alone.
func deleteTree(dir string, dev uint64) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			continue
		}
		if st.Dev != dev {
			continue // a mount point: not ours
		}
		if e.IsDir() {
			if err := deleteTree(p, dev); err != nil {
				return err
			}
			_ = unix.Rmdir(p) // fails, as it should, when a mount is below
			continue
		}
		if err := unix.Unlink(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}

func lateMounts() error {
	if err := mkdirMount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"); err != nil {
		return err
	}
	if err := mkdirMount("shm", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return err
	}
	// /tmp stays on the root filesystem (the disk, or the initramfs when
	// there is none, which is RAM already). A tmpfs over it would hide
	// what the template keeps there, and workspaces mounted under /tmp
	// would sit on a mount that goes away during power-off, leaving an
	// exec racing the shutdown with "chdir ...: no such file or directory".
	if err := os.Mkdir("/tmp", 0o755); err == nil {
		if err := os.Chmod("/tmp", 0o777|os.ModeSticky); err != nil {
			return fmt.Errorf("chmod /tmp: %w", err)
		}
	} else if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create /tmp: %w", err)
	}
	return nil
}

// findPort waits for the virtio-serial port named name and returns its
// device path.
func findPort(name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		matches, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err == nil && strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(m))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("virtio-serial port %q did not appear within %s (ports: %v; is virtio_console loaded?)", name, timeout, matches)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
