// Package qemu is the QEMU backend of package vm: a `-M microvm` machine
// with virtio-mmio devices and direct kernel boot.
//
// Args is a pure function from vm.Config to argv (golden-tested); the
// instance runs that argv and connects to the agent's virtio-serial port,
// which QEMU serves on a unix socket.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sbx-dev/sbx/internal/logcap"
	"github.com/sbx-dev/sbx/internal/vm"
)

// agentPortID is the QEMU device id of the agent port: QMP's
// VSERPORT_CHANGE events name it when the guest opens or closes its end.
const agentPortID = "agentport"

// AgentPortName is the name of the virtio-serial port the guest agent
// listens on; the guest finds it under /sys/class/virtio-ports.
const AgentPortName = "sbx.agent"

// Backend runs VMs with qemu-system-x86_64.
type Backend struct {
	// Binary is the path of qemu-system-x86_64.
	Binary string
}

var _ vm.Backend = (*Backend)(nil)

// New returns the QEMU backend using binary.
func New(binary string) *Backend { return &Backend{Binary: binary} }

// Name implements vm.Backend.
func (b *Backend) Name() string { return "qemu" }

// New implements vm.Backend.
func (b *Backend) New(_ context.Context, cfg vm.Config, log *slog.Logger) (vm.Instance, error) {
	if cfg.Accel != vm.AccelKVM && cfg.Accel != vm.AccelTCG {
		return nil, fmt.Errorf("accelerator %q: %w", cfg.Accel, vm.ErrNotSupported)
	}
	if cfg.AgentSocket == "" {
		return nil, errors.New("qemu: no agent socket in config")
	}
	if virtioFS(cfg) {
		switch {
		case cfg.FileServer == "":
			return nil, fmt.Errorf("a virtio-fs share needs a file server: %w", vm.ErrNotSupported)
		case cfg.RestoreFrom != "":
			// QEMU 7.2 refuses to load a state with a vhost-user-fs device.
			return nil, fmt.Errorf("resuming a saved state with a virtio-fs share: %w", vm.ErrNotSupported)
		case cfg.MemoryFile != "" && !cfg.MemoryShared:
			return nil, fmt.Errorf("a virtio-fs share with copy-on-write memory: %w", vm.ErrNotSupported)
		}
		for _, s := range cfg.Shares {
			if s.Of() == vm.TransportVirtioFS && s.Socket == "" {
				return nil, fmt.Errorf("qemu: virtio-fs share %s has no socket", s.Tag)
			}
		}
	}
	return &instance{binary: b.Binary, cfg: cfg, log: log, waitc: make(chan vm.Exit, 1)}, nil
}

// Args returns QEMU's argv (without the binary) for cfg. It is a pure
// function of cfg.
func Args(cfg vm.Config) []string {
	var a []string
	a = append(a, machineArgs(cfg)...)
	a = append(a, bootArgs(cfg)...)
	a = append(a, consoleArgs(cfg)...)
	a = append(a, diskArgs(cfg)...)
	a = append(a, shareArgs(cfg)...)
	a = append(a, netArgs(cfg)...)
	a = append(a, agentArgs(cfg)...)
	a = append(a, "-device", "virtio-rng-device")
	if cfg.PIDFile != "" {
		a = append(a, "-pidfile", cfg.PIDFile)
	}
	a = append(a, monitorArgs(cfg)...)
	return a
}

// memoryBackendID names the RAM backend of a VM with a memory file; the
// name is part of the saved state, so it never changes.
const memoryBackendID = "ram0"

// restoreFD is the descriptor number the saved state is passed on: the
// first of exec.Cmd.ExtraFiles.
const restoreFD = 3

func monitorArgs(cfg vm.Config) []string {
	if cfg.Monitor == "" {
		return nil
	}
	// -S: the CPUs start stopped; Start resumes them once the monitor is
	// connected (and the saved state loaded).
	a := []string{"-qmp", "unix:" + escape(cfg.Monitor) + ",server=on,wait=off", "-S"}
	switch {
	case cfg.RestoreFrom != "" && cfg.MemoryFile != "":
		// The state leaves RAM out (x-ignore-shared), a capability that
		// must be set before the load starts: Start sets it, then loads.
		a = append(a, "-incoming", "defer")
	case cfg.RestoreFrom != "":
		a = append(a, "-incoming", "fd:"+strconv.Itoa(restoreFD))
	}
	return a
}

func machineArgs(cfg vm.Config) []string {
	// QEMU's seccomp filter: it may not spawn processes, change its
	// privileges or use obsolete system calls, so a guest that broke into
	// QEMU gets little further.
	a := []string{"-nodefaults", "-no-user-config", "-display", "none",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}
	switch cfg.Accel {
	case vm.AccelKVM:
		a = append(a, "-M", "microvm,rtc=on", "-accel", "kvm", "-cpu", "host")
	default:
		// Under TCG the guest needs the PIT and RTC to calibrate its clock
		// (ENVIRONMENT.md); the translation cache is capped so an idle VM
		// does not hold a gigabyte of it.
		tb := cfg.TCGCacheMiB
		if tb <= 0 {
			tb = 256
		}
		a = append(a, "-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg,tb-size="+strconv.Itoa(tb), "-cpu", "max")
	}
	a = append(a, "-smp", strconv.Itoa(max(cfg.CPUs, 1)), "-m", strconv.Itoa(cfg.MemoryMiB)+"M")
	if virtioFS(cfg) {
		// vhost-user devices are modern virtio only (libvhost-user refuses
		// legacy), and the file server maps guest RAM: shared memory.
		a = append(a, "-global", "virtio-mmio.force-legacy=false")
		if cfg.MemoryFile == "" {
			a = append(a, "-object", "memory-backend-memfd,id="+memoryBackendID+",size="+strconv.Itoa(cfg.MemoryMiB)+"M,share=on",
				"-machine", "memory-backend="+memoryBackendID)
		}
	}
	if cfg.MemoryFile != "" {
		share := "off"
		if cfg.MemoryShared {
			share = "on"
		}
		a = append(a, "-object", "memory-backend-file,id="+memoryBackendID+",size="+strconv.Itoa(cfg.MemoryMiB)+"M,mem-path="+escape(cfg.MemoryFile)+",share="+share,
			"-machine", "memory-backend="+memoryBackendID)
	}
	return a
}

func bootArgs(cfg vm.Config) []string {
	cmdline := cfg.Cmdline
	if cfg.Accel == vm.AccelTCG && cfg.TSCkHz > 0 {
		cmdline = strings.TrimSpace(cmdline + " tsc=reliable tsc_early_khz=" + strconv.Itoa(cfg.TSCkHz) + " lpj=4000000 no_timer_check")
	}
	return []string{"-kernel", cfg.Kernel, "-initrd", cfg.Initrd, "-append", cmdline}
}

func consoleArgs(cfg vm.Config) []string {
	if cfg.ConsoleLog == "" {
		return []string{"-serial", "null"}
	}
	// Always appending (Start truncates it unless ConsoleAppend), so
	// capConsole can cut the file while QEMU writes it.
	opts := "file,id=console,path=" + escape(cfg.ConsoleLog) + ",append=on"
	return []string{"-chardev", opts, "-serial", "chardev:console"}
}

func diskArgs(cfg vm.Config) []string {
	var a []string
	for i, d := range cfg.Disks {
		id := "disk" + strconv.Itoa(i)
		opts := "id=" + id + ",if=none,file=" + escape(d.Path) + ",format=" + d.Format + ",cache=writeback,discard=unmap"
		if d.ReadOnly {
			opts += ",readonly=on"
		}
		dev := "virtio-blk-device,drive=" + id
		if d.Serial != "" {
			dev += ",serial=" + escape(d.Serial)
		}
		a = append(a, "-drive", opts, "-device", dev)
	}
	return a
}

func shareArgs(cfg vm.Config) []string {
	var a []string
	for _, s := range cfg.Shares {
		if s.Of() == vm.TransportVirtioFS {
			a = append(a, "-chardev", "socket,id=fs-"+s.Tag+",path="+escape(s.Socket),
				"-device", "vhost-user-fs-device,chardev=fs-"+s.Tag+",tag="+escape(s.Tag))
			continue
		}
		opts := "local,id=" + s.Tag + ",path=" + escape(s.Path) + ",security_model=none"
		if s.ReadOnly {
			opts += ",readonly=on"
		}
		a = append(a, "-fsdev", opts, "-device", "virtio-9p-device,fsdev="+s.Tag+",mount_tag="+s.Tag)
	}
	return a
}

func netArgs(cfg vm.Config) []string {
	if cfg.Net == nil {
		return nil
	}
	return []string{
		"-netdev", "stream,id=net0,server=off,addr.type=unix,addr.path=" + escape(cfg.Net.Socket),
		"-device", "virtio-net-device,netdev=net0,mac=" + cfg.Net.MAC,
	}
}

func agentArgs(cfg vm.Config) []string {
	return []string{
		"-chardev", "socket,id=agent,path=" + escape(cfg.AgentSocket) + ",server=on,wait=off",
		"-device", "virtio-serial-device,max_ports=2",
		"-device", "virtserialport,chardev=agent,id=" + agentPortID + ",name=" + AgentPortName,
	}
}

// virtioFS reports whether cfg has a virtio-fs share.
func virtioFS(cfg vm.Config) bool {
	for _, s := range cfg.Shares {
		if s.Of() == vm.TransportVirtioFS {
			return true
		}
	}
	return false
}

// escape doubles commas, QEMU's escape inside option values.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

type instance struct {
	binary string
	cfg    vm.Config
	log    *slog.Logger

	mu     sync.Mutex
	cmd    *exec.Cmd // guarded by mu
	conn   net.Conn  // guarded by mu
	mon    *monitor  // guarded by mu; nil without cfg.Monitor
	killed bool      // guarded by mu
	lost   error     // guarded by mu; why a file server ended the VM

	waitc chan vm.Exit
}

var (
	_ vm.Instance    = (*instance)(nil)
	_ vm.Snapshotter = (*instance)(nil)
)

func (i *instance) Start(ctx context.Context, stderr io.Writer) error {
	err := i.start(ctx, stderr)
	i.mu.Lock()
	started := i.cmd != nil
	i.mu.Unlock()
	if err != nil && !started {
		// No process: Wait still yields one Exit, so callers that Kill
		// and wait after a failed Start never block.
		i.waitc <- vm.Exit{Code: -1, Err: err, At: time.Now()}
		close(i.waitc)
	}
	return err
}

func (i *instance) start(ctx context.Context, stderr io.Writer) error {
	args := Args(i.cfg)
	i.log.Debug("starting qemu", "component", "vm", "argv", strings.Join(args, " "))
	if i.cfg.RestoreFrom != "" && i.cfg.Monitor == "" {
		return fmt.Errorf("restore %s: %w", i.cfg.RestoreFrom, errNoMonitor)
	}
	if i.cfg.MemoryFile != "" && !i.cfg.MemoryShared {
		// QEMU would create a missing memory file, and the guest would
		// resume on zeroed memory.
		st, err := os.Stat(i.cfg.MemoryFile)
		if err != nil || !st.Mode().IsRegular() || st.Size() < int64(i.cfg.MemoryMiB)<<20 {
			return fmt.Errorf("%w: memory file %s is missing or too small (%v)", vm.ErrRestore, i.cfg.MemoryFile, err)
		}
	}
	os.Remove(i.cfg.AgentSocket)
	if i.cfg.Monitor != "" {
		os.Remove(i.cfg.Monitor)
	}
	if i.cfg.ConsoleLog != "" && !i.cfg.ConsoleAppend {
		if err := logcap.Truncate(i.cfg.ConsoleLog); err != nil {
			return fmt.Errorf("start qemu: console log: %w", err)
		}
	}
	// The file servers listen before QEMU connects to them.
	servers, err := startFileServers(ctx, i.cfg, stderr)
	if err != nil {
		return err
	}
	stopServers := func() {
		for _, f := range servers {
			f.kill()
		}
	}
	var cmd *exec.Cmd
	var jl *jailed
	if i.cfg.Jail != nil {
		bin, err := exec.LookPath(i.binary)
		if err != nil {
			stopServers()
			return fmt.Errorf("start %s: %w", i.binary, vm.ErrVMMNotFound)
		}
		if bin, err = filepath.Abs(bin); err != nil {
			stopServers()
			return fmt.Errorf("start qemu: %w", err)
		}
		jcfg := i.cfg
		jcfg.PIDFile = "" // in its own PID namespace QEMU would write its pid there
		if jl, err = prepareJail(i.cfg, bin, Args(jcfg)); err != nil {
			stopServers()
			return fmt.Errorf("start qemu: %w", err)
		}
		cmd = jl.cmd
	} else {
		cmd = exec.Command(i.binary, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.Stdin = nil
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	// QEMU dies with its supervisor, so a killed supervisor never leaves an
	// orphan VM holding the disk.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr.Setpgid = true
	if i.cfg.RestoreFrom != "" {
		f, err := os.Open(i.cfg.RestoreFrom)
		if err != nil {
			stopServers()
			if jl != nil {
				jl.cleanup()
			}
			return fmt.Errorf("%w: %w", vm.ErrRestore, err)
		}
		defer f.Close()
		cmd.ExtraFiles = []*os.File{f} // fd 3: restoreFD
	}
	if err := cmd.Start(); err != nil {
		stopServers()
		if jl != nil {
			jl.cleanup()
		}
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("start %s: %w", i.binary, vm.ErrVMMNotFound)
		}
		return fmt.Errorf("start qemu: %w", err)
	}
	i.mu.Lock()
	i.cmd = cmd
	i.mu.Unlock()
	exited := make(chan struct{})
	if jl != nil && i.cfg.PIDFile != "" {
		_ = os.WriteFile(i.cfg.PIDFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	}
	if i.cfg.ConsoleLog != "" {
		go logcap.Watch(i.cfg.ConsoleLog, consoleMax, time.Second, exited)
	}
	qemuDone := make(chan struct{})
	for _, f := range servers {
		go i.watchFileServer(f, qemuDone)
	}
	go func() {
		err := cmd.Wait()
		close(qemuDone)
		stopServers()
		if jl != nil {
			jl.cleanup()
		}
		ex := vm.Exit{Code: cmd.ProcessState.ExitCode(), At: time.Now()}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ex.Signal = ws.Signal().String()
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			ex.Err = err
		}
		i.mu.Lock()
		if i.lost != nil {
			ex.Err = i.lost
		}
		i.mu.Unlock()
		close(exited)
		i.waitc <- ex
		close(i.waitc)
	}()

	if err := i.connect(ctx, exited); err != nil {
		i.Kill()
		return err
	}
	return nil
}

// connect connects the monitor (when there is one) and the agent channel,
// waits for a saved state to load, and resumes the CPUs: the guest runs
// only once the host end of its agent channel is there.
func (i *instance) connect(ctx context.Context, exited <-chan struct{}) error {
	var mon *monitor
	if i.cfg.Monitor != "" {
		var err error
		if mon, err = connectMonitor(ctx, i.cfg.Monitor, exited); err != nil {
			return err
		}
		i.mu.Lock()
		i.mon = mon
		i.mu.Unlock()
	}
	conn, err := i.dialAgent(ctx, exited)
	if err != nil {
		return err
	}
	i.mu.Lock()
	i.conn = conn
	i.mu.Unlock()
	if mon == nil {
		return nil
	}
	if i.cfg.RestoreFrom != "" {
		start := time.Now()
		if i.cfg.MemoryFile != "" {
			if err := mon.setIgnoreShared(ctx); err != nil {
				return fmt.Errorf("%w: %w", vm.ErrRestore, err)
			}
			if err := mon.run(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + strconv.Itoa(restoreFD)}, nil, nil); err != nil {
				return fmt.Errorf("%w: %w", vm.ErrRestore, err)
			}
		}
		if err := mon.waitLoaded(ctx, exited); err != nil {
			return err
		}
		i.log.Debug("vm state loaded", "component", "vm", "duration", time.Since(start).String())
	}
	if err := mon.run(ctx, "cont", nil, nil, nil); err != nil {
		return err
	}
	return nil
}

// WaitAgentOpen implements vm.Snapshotter.
func (i *instance) WaitAgentOpen(ctx context.Context) error {
	i.mu.Lock()
	mon := i.mon
	i.mu.Unlock()
	if mon == nil {
		return errNoMonitor
	}
	select {
	case <-mon.openc:
		return nil
	case <-mon.done:
		return fmt.Errorf("qemu: %w", vm.ErrVMExitedEarly)
	case <-ctx.Done():
		return fmt.Errorf("wait for the guest agent to open its port: %w", ctx.Err())
	}
}

// Save implements vm.Snapshotter.
func (i *instance) Save(ctx context.Context, f *os.File) error {
	i.mu.Lock()
	mon := i.mon
	i.mu.Unlock()
	if mon == nil {
		return errNoMonitor
	}
	if i.cfg.MemoryFile != "" && i.cfg.MemoryShared {
		// RAM is in the memory file already: keep it out of the state.
		if err := mon.setIgnoreShared(ctx); err != nil {
			return err
		}
	}
	return mon.save(ctx, f)
}

// dialAgent connects to the agent socket QEMU creates shortly after start.
func (i *instance) dialAgent(ctx context.Context, exited <-chan struct{}) (net.Conn, error) {
	var d net.Dialer
	for {
		ref, done, err := socketRef(i.cfg.AgentSocket)
		var conn net.Conn
		if err == nil {
			conn, err = d.DialContext(ctx, "unix", ref)
			done()
		}
		if err == nil {
			return conn, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("qemu: %w", vm.ErrVMExitedEarly)
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to agent socket: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (i *instance) AgentConn() net.Conn {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.conn
}

func (i *instance) PID() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cmd == nil || i.cmd.Process == nil {
		return 0
	}
	return i.cmd.Process.Pid
}

func (i *instance) Wait() <-chan vm.Exit { return i.waitc }

// watchFileServer stops the VM when file server f ends before QEMU does:
// the guest's requests to it would never be answered, so every process
// touching the workspace would hang with nothing said.
func (i *instance) watchFileServer(f *fileServer, qemuDone <-chan struct{}) {
	select {
	case <-qemuDone:
		return
	case <-f.done:
	}
	select {
	case <-qemuDone: // stopped with QEMU
		return
	default:
	}
	err := fmt.Errorf("%w: share %s: %s", vm.ErrFileServerExited, f.tag, f.cmd.ProcessState)
	i.log.Error("file server exited; stopping the vm", "component", "vm", "share", f.tag, "state", f.cmd.ProcessState.String())
	i.mu.Lock()
	if i.lost == nil {
		i.lost = err
	}
	i.mu.Unlock()
	i.Kill()
}

func (i *instance) Kill() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.conn != nil {
		i.conn.Close()
	}
	if i.mon != nil {
		i.mon.close()
		i.mon = nil
	}
	if i.cmd == nil || i.cmd.Process == nil || i.killed {
		return nil
	}
	i.killed = true
	if err := i.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill qemu: %w", err)
	}
	return nil
}
