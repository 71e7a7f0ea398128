// Package supervisor is the per-sandbox host process. `sbx supervise ID`
// (a hidden re-exec of the sbx binary, started detached by Launch) owns the
// sandbox's VMM process and its agent connection, serves the control API
// (api/controlapi) on control.sock, records the sandbox's state in
// state.json and shuts the VM down when asked, when its last session ends,
// or when it receives SIGTERM.
//
// Lifetime: the supervisor lives exactly as long as its VM. When QEMU exits
// without being asked to, the supervisor records the sandbox as crashed,
// with the reason, and exits; the next start recovers it. QEMU is started
// with a parent-death signal, so a killed supervisor never leaves a VM
// behind.
package supervisor

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/jail"
	"github.com/sbx-dev/sbx/internal/logcap"
	"github.com/sbx-dev/sbx/internal/netstack"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/secrets"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/vm"
	"github.com/sbx-dev/sbx/internal/vm/qemu"
)

// BootVersion is the version of boot.json.
const BootVersion = 1

// Boot is what the CLI resolved for one start of a sandbox (boot.json in
// the sandbox folder): the assets and the accelerator. Written by Launch,
// read by the supervisor.
type Boot struct {
	Version       int    `json:"version"`
	QEMU          string `json:"qemu"`
	Kernel        string `json:"kernel"`
	KernelRelease string `json:"kernelRelease"`
	Initrd        string `json:"initrd"`
	Accel         string `json:"accel"`
	TSCkHz        int    `json:"tscKHz"`
	CPUs          int    `json:"cpus"`
	// MAC is the guest network card's address.
	MAC string `json:"mac"`
	// ConfigDir holds the policy file and the proxy CA.
	ConfigDir string `json:"configDir"`
	// CacheDir holds the template images and snapshots, the only files
	// a sandbox's disk may name as its backing (see vm.Jail.Backing).
	CacheDir string `json:"cacheDir"`
	// HostsFile is SBX_HOSTS_FILE: a hosts-format file that overrides
	// upstream name resolution (tests map their domains to loopback).
	HostsFile string `json:"hostsFile,omitempty"`
	// Limits bound what one sandbox's guest may hold at once.
	Limits   Limits `json:"limits,omitzero"`
	Detached bool   `json:"detached"`
	// FileServer is the virtio-fs server workspaces are served by on a
	// cold boot; empty, they are 9p shares, for the reason NoFileServer.
	FileServer   string `json:"fileServer,omitempty"`
	NoFileServer string `json:"noFileServer,omitempty"`
	// Restore, when set, resumes the VM from a snapshot instead of
	// booting it (the sandbox's first start; its disk is an overlay of
	// the snapshot's). On failure the supervisor boots cold and says so.
	Restore *Restore `json:"restore,omitempty"`
}

// Limits bound one sandbox's network use; zero fields take the defaults.
type Limits struct {
	// Flows is the most TCP connections the guest may have open at once,
	// on every path (raw, transparent, forward proxy and its tunnels).
	Flows int `json:"flows,omitempty"`
	// DNS is the most upstream DNS lookups in flight at once.
	DNS int `json:"dns,omitempty"`
}

// Default limits.
const (
	DefaultMaxFlows = 1024
	DefaultMaxDNS   = netstack.DefaultMaxLookups
)

func (l Limits) withDefaults() Limits {
	if l.Flows <= 0 {
		l.Flows = DefaultMaxFlows
	}
	if l.DNS <= 0 {
		l.DNS = DefaultMaxDNS
	}
	return l
}

// Restore is a snapshot start: the snapshot's spec (the VM shape it was
// saved with), its state file and the empty folder unused share slots
// export.
type Restore struct {
	Key   string `json:"key"`
	State string `json:"state"`
	RAM   string `json:"ram"`
	// Console is the snapshot VM's console log: the boot this guest's
	// memory went through, the start of the sandbox's console log.
	Console string        `json:"console,omitempty"`
	Empty   string        `json:"empty"`
	Spec    snapshot.Spec `json:"spec"`
}

// Timeouts.
const (
	agentTimeoutTCG = 3 * time.Minute
	agentTimeoutKVM = time.Minute
	restoreTimeout  = 30 * time.Second
	shutdownTimeout = 30 * time.Second
)

// Supervisor runs one sandbox. Create it with New and call Run once.
type Supervisor struct {
	store   *sandbox.Store
	sb      *sandbox.Sandbox
	boot    Boot
	log     *slog.Logger
	backend vm.Backend
	secrets *secrets.Store
	net     *network   // set by Run before the VM starts
	ports   *publisher // forwards published ports; serves once running

	// stateMu serialises writes of state.json.
	stateMu sync.Mutex

	stopOnce sync.Once
	stopc    chan struct{} // closed when a stop is requested
	downOnce sync.Once
	downc    chan struct{} // closed when the VM is down (or never came up)

	mu       sync.Mutex
	state    controlapi.State       // guarded by mu
	phase    string                 // guarded by mu
	phases   []controlapi.Phase     // guarded by mu
	errText  string                 // guarded by mu
	notes    []string               // guarded by mu; warnings for the starting command
	share    vm.Transport           // guarded by mu; how this boot's workspaces are shared
	shareWhy string                 // guarded by mu; why not virtio-fs
	fsFailed string                 // guarded by mu; why the file server failed this start
	detached bool                   // guarded by mu
	sessions int                    // guarded by mu
	client   *agentclient.Client    // guarded by mu
	hello    agentapi.HelloResponse // guarded by mu
	started  time.Time              // guarded by mu
	inst     vm.Instance            // guarded by mu
	// idleSince is when the session count last became zero.
	idleSince time.Time // guarded by mu
	// baseCtx is the network's context, for work started by API calls.
	baseCtx context.Context // guarded by mu
	// protectLost says why protection was lost while the VM ran (see
	// watchProtect); the VM is killed then.
	protectLost error // guarded by mu
}

// SupervisorLogMax caps supervisor.log; past it the newest half moves to
// supervisor.log.1.
const SupervisorLogMax = 16 << 20

// Options are optional settings of New.
type Options struct {
	// Backend runs the VM; nil means QEMU at the path in boot.json.
	Backend vm.Backend
	// Secrets is the credential store whose secrets the proxy injects;
	// nil injects nothing.
	Secrets *secrets.Store
}

// New prepares a supervisor for sb, reading boot.json.
func New(store *sandbox.Store, sb *sandbox.Sandbox, log *slog.Logger, opts Options) (*Supervisor, error) {
	data, err := os.ReadFile(sb.Path(sandbox.BootFile))
	if err != nil {
		return nil, fmt.Errorf("read boot spec: %w", err)
	}
	var b Boot
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("parse boot spec: %w", err)
	}
	if b.Version != BootVersion {
		return nil, fmt.Errorf("boot spec version %d, want %d", b.Version, BootVersion)
	}
	if b.ConfigDir == "" || !filepath.IsAbs(b.ConfigDir) || b.MAC == "" {
		return nil, fmt.Errorf("boot spec %s lacks the config folder or the mac address", sb.Path(sandbox.BootFile))
	}
	backend := opts.Backend
	if backend == nil {
		backend = qemu.New(b.QEMU)
	}
	s := &Supervisor{
		store: store, sb: sb, boot: b, log: log.With("sandbox", sb.Config.Name), backend: backend, secrets: opts.Secrets,
		stopc: make(chan struct{}), downc: make(chan struct{}),
		state: controlapi.StateStarting, detached: b.Detached,
	}
	s.ports = newPublisher(s)
	return s, nil
}

// Run boots the VM, serves the control API and returns when the VM is down.
// Cancelling ctx shuts the VM down cleanly.
func (s *Supervisor) Run(ctx context.Context) (err error) {
	id := s.sb.Config.ID
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	// On every way out, before the cleanups close the control server: a
	// stop request waiting for the VM to be down gets its answer.
	defer s.markDown()
	// This process's own log (its stderr, appended to supervisor.log by
	// Launch) records what the guest does on the network: kept under a
	// cap, as the console log.
	logDone := make(chan struct{})
	cleanups = append(cleanups, func() { close(logDone) })
	go logcap.Watch(s.sb.Path(sandbox.SupervisorLog), SupervisorLogMax, time.Second, logDone)
	rt, err := s.store.Dirs().EnsureRuntimeDir(id)
	if err != nil {
		return s.fail(err)
	}
	started := time.Now().UTC()
	if err := s.store.SetState(s.sb, sandbox.State{Status: sandbox.StatusStarting, PID: os.Getpid(), Detached: s.boot.Detached, Started: started}); err != nil {
		return err
	}

	protectCtx, stopProtect := context.WithCancel(context.WithoutCancel(ctx))
	cleanups = append(cleanups, stopProtect)
	if err := s.protect(protectCtx); err != nil {
		return s.fail(err)
	}

	sock := filepath.Join(rt, sandbox.ControlSocket)
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return s.fail(fmt.Errorf("listen on control socket: %w", err))
	}
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		_ = srv.Serve(ln)
	}()
	cleanups = append(cleanups, func() {
		// Let requests in flight finish (a stop request answers once the
		// VM is down, just before this runs); hijacked streams are not
		// waited for.
		sctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		<-srvDone
		os.Remove(sock)
	})

	netCtx, cancelNet := context.WithCancel(context.WithoutCancel(ctx))
	nw, err := newNetwork(netCtx, s.sb, s.boot, s.secrets, s.log)
	if err != nil {
		cancelNet()
		return s.fail(err)
	}
	cleanups = append(cleanups, func() {
		cancelNet()
		nw.close()
	})
	if err := os.MkdirAll(filepath.Join(rt, sandbox.VMMDir), 0o700); err != nil {
		return s.fail(err)
	}
	if err := nw.start(netCtx, filepath.Join(rt, sandbox.VMMDir, NetSocket)); err != nil {
		return s.fail(err)
	}
	s.net = nw
	s.mu.Lock()
	s.baseCtx = netCtx
	s.mu.Unlock()
	cleanups = append(cleanups, func() {
		cancelNet() // ends forwarded flows, so close does not wait on them
		s.ports.close()
	})

	inst, err := s.startVM(ctx, rt)
	if err != nil {
		return s.fail(s.protectionLostOr(err))
	}
	cleanups = append(cleanups, func() { inst.Kill() })

	s.markRunning(started)
	s.log.Info("sandbox running", "component", "supervisor")
	s.ports.restore(netCtx)
	idleCtx, stopIdle := context.WithCancel(ctx)
	cleanups = append(cleanups, stopIdle)
	go s.stopWhenIdle(idleCtx)

	var exit vm.Exit
	requested := false
	select {
	case exit = <-inst.Wait():
	case <-s.stopc:
		requested = true
		exit = s.shutdown(ctx, inst)
	case <-ctx.Done():
		requested = true
		exit = s.shutdown(context.WithoutCancel(ctx), inst)
	}
	s.markDown()
	s.mu.Lock()
	if s.client != nil {
		s.client.Close()
	}
	s.mu.Unlock()
	if requested {
		s.log.Info("sandbox stopped", "component", "supervisor", "exit", exit.Code)
		return s.setState(sandbox.State{Status: sandbox.StatusStopped})
	}
	reason := describeExit(exit)
	if err := s.protectionLostOr(nil); err != nil {
		reason = err.Error()
	}
	s.log.Error("vm exited unexpectedly", "component", "supervisor", "reason", reason)
	if err := s.setState(sandbox.State{Status: sandbox.StatusCrashed, Reason: reason}); err != nil {
		return err
	}
	return fmt.Errorf("vm exited unexpectedly: %s", reason)
}

func describeExit(e vm.Exit) string {
	switch {
	case errors.Is(e.Err, vm.ErrFileServerExited):
		return e.Err.Error() + "; the VM was stopped (its workspace could no longer be served); its output is in `sbx logs`; start the sandbox again"
	case e.Signal != "":
		return "qemu was killed (" + e.Signal + ")"
	case e.Err != nil:
		return "qemu ended: " + e.Err.Error()
	case e.Code == 0:
		return "the guest powered off by itself"
	default:
		return "qemu exited with code " + strconv.Itoa(e.Code)
	}
}

// idleTimeout is how long a VM that was not started detached keeps running
// without any session, for example when the command that started it died
// before attaching.
const idleTimeout = 30 * time.Second

// stopWhenIdle stops a VM not started detached once it has had no session
// for idleTimeout.
func (s *Supervisor) stopWhenIdle(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		idle := !s.detached && s.sessions == 0 && s.state == controlapi.StateRunning && time.Since(s.idleSince) > idleTimeout
		if idle {
			s.state = controlapi.StateStopping
		}
		s.mu.Unlock()
		if idle {
			s.log.Info("no session for a while; stopping", "component", "supervisor", "idle", idleTimeout)
			s.requestStop()
			return
		}
	}
}

// markRunning records the running state on disk and only then reports it
// over the control socket: a client that saw "running" there (Launch waits
// for it) must find it in the state file too.
func (s *Supervisor) markRunning(started time.Time) {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	s.mu.Lock()
	detached, share, why := s.detached, string(s.share), s.shareWhy
	s.mu.Unlock()
	if err := s.store.SetState(s.sb, sandbox.State{Status: sandbox.StatusRunning, PID: os.Getpid(), Detached: detached, Started: started, Share: share, ShareWhy: why}); err != nil {
		s.log.Error("record state", "err", err)
	}
	s.mu.Lock()
	s.state = controlapi.StateRunning
	s.phase = ""
	s.started = started
	s.idleSince = time.Now()
	s.mu.Unlock()
}

// recordRunning writes the running state, with the detached flag, unless
// the VM has moved on to stopping. Only state changes from running go
// through here, under stateMu, so a late write cannot undo "stopping".
func (s *Supervisor) recordRunning() {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	s.mu.Lock()
	running, detached, started := s.state == controlapi.StateRunning, s.detached, s.started
	share, why := string(s.share), s.shareWhy
	s.mu.Unlock()
	if !running {
		return
	}
	if err := s.store.SetState(s.sb, sandbox.State{Status: sandbox.StatusRunning, PID: os.Getpid(), Detached: detached, Started: started, Share: share, ShareWhy: why}); err != nil {
		s.log.Error("record state", "err", err)
	}
}

// setState writes st under stateMu.
func (s *Supervisor) setState(st sandbox.State) error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	return s.store.SetState(s.sb, st)
}

// fail records a failed start and returns err.
func (s *Supervisor) fail(err error) error {
	s.mu.Lock()
	s.state = controlapi.StateFailed
	s.errText = err.Error()
	s.mu.Unlock()
	s.log.Error("start failed", "component", "supervisor", "err", err)
	st := sandbox.State{Status: sandbox.StatusCrashed, Reason: "start failed: " + err.Error()}
	if errors.Is(err, context.Canceled) {
		// Interrupted (the starting command was stopped): nothing broke.
		st = sandbox.State{Status: sandbox.StatusStopped}
	}
	if serr := s.setState(st); serr != nil {
		s.log.Error("record state", "err", serr)
	}
	return err
}

// protect makes the sandbox's protected paths read-only for QEMU (and so
// for the guest) before QEMU starts; see protect.go.
func (s *Supervisor) protect(ctx context.Context) error {
	if !Protected(s.sb.Config) {
		return nil
	}
	plan, err := planProtect(s.sb.Config)
	if err != nil {
		return fmt.Errorf("protected paths: %w", err)
	}
	for _, m := range plan.Missing {
		s.log.Warn("protected path does not exist; not protected", "component", "supervisor", "path", m)
	}
	for _, n := range plan.Notes {
		s.log.Warn("protected paths: "+n, "component", "supervisor")
	}
	if err := applyProtect(plan.Steps); err != nil {
		return fmt.Errorf("protected paths: %w", err)
	}
	for _, st := range plan.Steps {
		s.log.Info("protect", "component", "supervisor", "path", st.Path, "readOnly", st.ReadOnly)
	}
	if err := watchProtect(ctx, plan.Steps, s.protectEvent); err != nil {
		return fmt.Errorf("protected paths: %w", err)
	}
	return nil
}

// protectEvent handles a protecting mount that went away while the
// sandbox ran (a rename or unlink on the host, see watchProtect): made
// again, it is logged; otherwise the VM is killed (fail closed) and the
// reason recorded.
func (s *Supervisor) protectEvent(ev protectEvent) {
	if ev.Err == nil {
		s.log.Warn("a protecting mount was taken away from outside (a rename or unlink of the path on the host); protected again", "component", "supervisor", "path", ev.Path)
		return
	}
	err := fmt.Errorf("protection of %s lost (a rename or unlink on the host) and not restored: %w; the VM was stopped", ev.Path, ev.Err)
	s.mu.Lock()
	if s.protectLost == nil {
		s.protectLost = err
	}
	inst := s.inst
	s.mu.Unlock()
	s.log.Error("protected paths", "component", "supervisor", "err", err)
	if inst != nil {
		_ = inst.Kill()
	}
}

// protectionLostOr returns the loss of protection, if any, else err.
func (s *Supervisor) protectionLostOr(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.protectLost != nil {
		return s.protectLost
	}
	return err
}

// phaseFunc runs one named boot phase, logging and recording its duration.
func (s *Supervisor) phaseFunc(name string, f func() error) error {
	s.mu.Lock()
	s.phase = name
	s.mu.Unlock()
	start := time.Now()
	err := f()
	d := time.Since(start)
	s.log.Info("boot phase", "component", "supervisor", "phase", name, "duration", d.String(), "err", err)
	s.mu.Lock()
	s.phases = append(s.phases, controlapi.Phase{Name: name, DurationMS: d.Milliseconds()})
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// GuestCmdline is the guest kernel's command line (QEMU's backend adds the
// clock options TCG needs). cryptomgr.notests=1 skips the kernel's crypto
// self-tests, which cost about 0.45 s of the boot under TCG (and 0.15 s
// of module loading): they check the kernel's own algorithm code, and the
// guest's kernel is no part of the host's defences (docs/architecture.md,
// "Boot path"). The agent reads sbx.root and sbx.rootfstype; snapshots are
// keyed by the whole line.
const GuestCmdline = "console=ttyS0 panic=-1 quiet loglevel=4 cryptomgr.notests=1 sbx.root=/dev/vda sbx.rootfstype=ext4"

// guestPhases names the guest's own boot phases (from hello) "guest:NAME"
// for the supervisor's list; they break the "agent" phase down.
func guestPhases(ps []agentapi.BootPhase) []controlapi.Phase {
	var out []controlapi.Phase
	for _, p := range ps {
		out = append(out, controlapi.Phase{Name: "guest:" + p.Name, DurationMS: (p.DurationUS + 500) / 1000})
	}
	return out
}

// startVM boots the VM, or resumes it from its snapshot when boot.json
// says so; a failed restore falls back to a cold boot, with a note for the
// starting command.
func (s *Supervisor) startVM(ctx context.Context, rt string) (vm.Instance, error) {
	docker, dockerDisk, err := s.dockerSetup(ctx)
	if err != nil {
		return nil, err
	}
	if r := s.boot.Restore; r != nil {
		inst, err := s.bootVM(ctx, rt, r, docker, dockerDisk)
		if err == nil {
			return inst, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		if lost := s.protectionLostOr(nil); lost != nil {
			return nil, lost
		}
		s.log.Warn("snapshot start failed; booting cold", "component", "supervisor", "err", err)
		// Its console log stays for diagnosis; the cold boot starts a new one.
		note := "the snapshot start failed (" + err.Error()
		failedLog := s.sb.Path(sandbox.ConsoleLog) + ".restore-failed"
		if os.Rename(s.sb.Path(sandbox.ConsoleLog), failedLog) == nil {
			note += "; its console log is " + failedLog
		}
		s.addNote(note + "); booted cold instead")
		s.mu.Lock()
		s.inst = nil
		s.client = nil
		s.hello = agentapi.HelloResponse{}
		s.mu.Unlock()
	}
	inst, err := s.bootVM(ctx, rt, nil, docker, dockerDisk)
	if err == nil || !errors.Is(err, vm.ErrFileServer) || ctx.Err() != nil {
		return inst, err
	}
	// The file server did not start (a host that refuses user
	// namespaces, a server that does not run here): the same boot with
	// 9p shares, said.
	s.log.Warn("virtio-fs file server failed; booting with 9p shares", "component", "supervisor", "err", err)
	s.addNote("the workspace is shared over 9p, slower: " + err.Error())
	s.mu.Lock()
	s.fsFailed = err.Error()
	s.inst = nil
	s.client = nil
	s.hello = agentapi.HelloResponse{}
	s.mu.Unlock()
	return s.bootVM(ctx, rt, nil, docker, dockerDisk)
}

// shareTransport is how this boot's workspaces reach the guest, and why
// when not over virtio-fs.
func (s *Supervisor) shareTransport(restore *Restore) (vm.Transport, string) {
	s.mu.Lock()
	failed := s.fsFailed
	s.mu.Unlock()
	switch {
	case restore != nil:
		return vm.Transport9P, "a snapshot start: this QEMU cannot resume a VM with a virtio-fs device (the next start of the sandbox boots cold, with virtio-fs)"
	case s.boot.FileServer == "":
		return vm.Transport9P, s.boot.NoFileServer
	case failed != "":
		return vm.Transport9P, failed
	}
	return vm.TransportVirtioFS, ""
}

// addNote records a warning the starting command shows.
func (s *Supervisor) addNote(n string) {
	s.mu.Lock()
	s.notes = append(s.notes, n)
	s.mu.Unlock()
}

// vmConfig is the VM of this start: the snapshot layout when restoring,
// else exactly the sandbox's devices.
func (s *Supervisor) vmConfig(rt string, restore *Restore, dockerDisk string) (vm.Config, []agentapi.Workspace, error) {
	cfg := s.sb.Config
	var ws []agentapi.Workspace
	var shares []vm.Share
	transport, why := s.shareTransport(restore)
	s.mu.Lock()
	s.share, s.shareWhy = transport, why
	s.mu.Unlock()
	i := 0
	for _, w := range cfg.Workspaces {
		if w.Unshared {
			continue
		}
		// The path recorded at create was real; a guest may have turned
		// it into a link since (through an outer workspace), and the VMM
		// or the file server would follow it out of the workspace.
		fd, err := jail.OpenReal(w.Path)
		if err != nil {
			return vm.Config{}, nil, fmt.Errorf("workspace %s is not the folder it was when the sandbox was made (%w); check it on the host, or remove the sandbox with `sbx rm`", w.Path, err)
		}
		unix.Close(fd)
		tag := snapshot.ShareTag(i)
		sh := vm.Share{Tag: tag, Path: w.Path, ReadOnly: w.ReadOnly}
		if transport == vm.TransportVirtioFS {
			sh.Transport = transport
			// A folder of the file servers' own: a server sees its socket,
			// not QEMU's agent, monitor and network sockets.
			sh.Socket = filepath.Join(rt, sandbox.VMMDir, "fs", tag+".sock")
		}
		shares = append(shares, sh)
		ws = append(ws, agentapi.Workspace{Tag: tag, Path: w.GuestPath(), ReadOnly: w.ReadOnly, FS: string(sh.Of())})
		i++
	}
	dev := snapshot.Devices{
		Name:        cfg.Name,
		RootDisk:    s.sb.Path(sandbox.DiskFile),
		DockerDisk:  dockerDisk,
		Workspaces:  shares,
		NetSocket:   filepath.Join(rt, sandbox.VMMDir, NetSocket),
		MAC:         s.boot.MAC,
		AgentSocket: filepath.Join(rt, sandbox.VMMDir, sandbox.AgentSocket),
		Monitor:     filepath.Join(rt, sandbox.VMMDir, sandbox.QMPSocket),
		ConsoleLog:  s.sb.Path(sandbox.ConsoleLog),
	}
	if restore != nil {
		if (restore.Spec.DockerDiskBytes > 0) != (dockerDisk != "") {
			return vm.Config{}, nil, fmt.Errorf("%w: the snapshot and the sandbox differ in having a docker disk", snapshot.ErrNotEligible)
		}
		dev.Empty = restore.Empty
		dev.MemoryFile = restore.RAM
		vc, err := snapshot.VMConfig(restore.Spec, dev)
		vc.RestoreFrom = restore.State
		vc.Jail = s.jail(cfg)
		return vc, ws, err
	}
	vc := vm.Config{
		Name:        dev.Name,
		Kernel:      s.boot.Kernel,
		Initrd:      s.boot.Initrd,
		Cmdline:     GuestCmdline,
		CPUs:        s.boot.CPUs,
		MemoryMiB:   cfg.MemoryMiB,
		Accel:       vm.Accel(s.boot.Accel),
		TSCkHz:      s.boot.TSCkHz,
		Disks:       []vm.Disk{{Path: dev.RootDisk, Format: "qcow2"}},
		Shares:      shares,
		FileServer:  s.boot.FileServer,
		AgentSocket: dev.AgentSocket,
		Monitor:     dev.Monitor,
		ConsoleLog:  dev.ConsoleLog,
		Net:         &vm.Net{Socket: dev.NetSocket, MAC: dev.MAC},
		// QEMU never keeps root: it runs as the guest user's host uid (the
		// owner of what it writes into workspaces), jailed.
		Jail: s.jail(cfg),
	}
	if dockerDisk != "" {
		vc.Disks = append(vc.Disks, vm.Disk{Path: dockerDisk, Format: "raw", Serial: DockerDiskSerial})
	}
	return vc, ws, nil
}

// jail is how the sandbox's VMM is confined: as the guest user's host
// uid, its disks allowed to name only sbx's template images and
// snapshots as backing files.
func (s *Supervisor) jail(cfg sandbox.Config) *vm.Jail {
	j := vm.DefaultJail(cfg.UID, cfg.GID)
	if s.boot.CacheDir != "" {
		j.Backing = snapshot.Backing(s.boot.CacheDir)
	}
	return j
}

// bootVM starts the VM (cold, or from restore), waits for its agent and
// sends the setup.
func (s *Supervisor) bootVM(ctx context.Context, rt string, restore *Restore, docker *agentapi.DockerSetup, dockerDisk string) (vm.Instance, error) {
	cfg := s.sb.Config
	vc, ws, err := s.vmConfig(rt, restore, dockerDisk)
	if err != nil {
		return nil, err
	}
	accel := vc.Accel
	// A fresh console log per boot keeps `sbx logs` about this boot; a
	// resumed guest's boot is the snapshot VM's, so its log starts with
	// that one.
	os.Remove(vc.ConsoleLog)
	if restore != nil && restore.Console != "" {
		if err := startConsoleFrom(vc.ConsoleLog, restore.Console, restore.Key); err != nil {
			s.log.Warn("console log of the snapshot not copied", "component", "supervisor", "err", err)
		}
		vc.ConsoleAppend = true
	}

	inst, err := s.backend.New(ctx, vc, s.log)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.inst = inst
	lost := s.protectLost
	s.mu.Unlock()
	if lost != nil {
		return nil, lost
	}
	timeout := agentTimeoutTCG
	if accel == vm.AccelKVM {
		timeout = agentTimeoutKVM
	}
	if restore != nil {
		// A restored agent is already up; waiting long means it is not
		// coming, and a cold boot should start soon.
		timeout = restoreTimeout
	}
	bootCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	vmmPhase := "vmm"
	if restore != nil {
		vmmPhase = "restore"
	}
	err = s.phaseFunc(vmmPhase, func() error { return inst.Start(bootCtx, vmmLog{s.log}) })
	if err != nil {
		inst.Kill()
		<-inst.Wait()
		return nil, err
	}
	// Protection lost while QEMU started: the watcher's kill may have come
	// before there was a process to kill.
	if err := s.protectionLostOr(nil); err != nil {
		inst.Kill()
		return nil, err
	}
	var client *agentclient.Client
	err = s.phaseFunc("agent", func() error {
		// The guest's answer to hello is the agent being up: this phase is
		// the kernel boot plus the agent's own start.
		type result struct {
			c   *agentclient.Client
			err error
		}
		done := make(chan result, 1)
		go func() {
			c, err := agentclient.Dial(bootCtx, inst.AgentConn(), s.log)
			done <- result{c, err}
		}()
		// A client that arrives after this phase gave up is closed.
		closeLate := func() {
			go func() {
				if r := <-done; r.c != nil {
					r.c.Close()
				}
			}()
		}
		select {
		case r := <-done:
			client = r.c
			return r.err
		case ex := <-inst.Wait():
			closeLate()
			return fmt.Errorf("%w: %s; see %s", vm.ErrVMExitedEarly, describeExit(ex), vc.ConsoleLog)
		case <-bootCtx.Done():
			closeLate()
			return fmt.Errorf("%w within %s (%s); see %s", vm.ErrAgentTimeout, timeout, accel, vc.ConsoleLog)
		}
	})
	if err != nil {
		inst.Kill()
		<-inst.Wait()
		return nil, err
	}
	s.mu.Lock()
	s.client = client
	s.hello = client.Info()
	if restore == nil {
		// A resumed guest's boot phases are the snapshot VM's.
		s.phases = append(s.phases, guestPhases(s.hello.BootPhases)...)
	}
	s.mu.Unlock()
	err = s.phaseFunc("setup", func() error {
		stream, err := client.OpenStream(bootCtx)
		if err != nil {
			return err
		}
		defer stream.Close()
		resp, err := agentclient.Call(bootCtx, stream, agentapi.Request{Op: agentapi.OpSetup, Setup: &agentapi.SetupRequest{
			Identity:   s.identity(),
			Hostname:   cfg.Name,
			User:       "agent",
			UID:        cfg.UID,
			GID:        cfg.GID,
			Workspaces: ws,
			Network:    s.net.guestSetup(),
			Git:        gitSetup(cfg.Git),
			Docker:     docker,
		}})
		if err != nil {
			return err
		}
		if !resp.OK {
			return errors.New(resp.Error)
		}
		return nil
	})
	if err != nil {
		client.Close()
		inst.Kill()
		<-inst.Wait()
		return nil, err
	}
	return inst, nil
}

// startConsoleFrom begins the console log at path with the snapshot VM's
// console log and a line saying where the resumed guest takes over.
func startConsoleFrom(path, snapshotConsole, key string) error {
	data, err := os.ReadFile(snapshotConsole)
	if err != nil {
		return err
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	data = append(data, fmt.Sprintf("[sbx] %s: resumed from snapshot %s (the boot above is the snapshot VM's)\n", time.Now().UTC().Format(time.RFC3339), key)...)
	return os.WriteFile(path, data, 0o600)
}

// identity is the guest's identity for this start: its machine id (random,
// made at creation, stable for the sandbox), the host's clock and fresh
// random bytes.
func (s *Supervisor) identity() *agentapi.Identity {
	seed := make([]byte, 64)
	_, _ = rand.Read(seed)
	id := s.sb.Config.MachineID
	if id == "" {
		// Sandboxes made before machine ids were recorded.
		sum := sha256.Sum256([]byte("sbx machine-id\x00" + s.sb.Config.ID))
		id = hex.EncodeToString(sum[:16])
	}
	return &agentapi.Identity{
		MachineID:    id,
		TimeUnixNano: time.Now().UnixNano(),
		Seed:         seed,
	}
}

// shutdown asks the guest to power off and waits for QEMU to exit, killing
// it after shutdownTimeout.
func (s *Supervisor) shutdown(ctx context.Context, inst vm.Instance) vm.Exit {
	s.mu.Lock()
	s.state = controlapi.StateStopping
	client := s.client
	s.mu.Unlock()
	_ = s.setState(sandbox.State{Status: sandbox.StatusStopping, PID: os.Getpid()})
	ctx, cancel := context.WithTimeout(ctx, shutdownTimeout)
	defer cancel()
	if client != nil {
		go func() {
			stream, err := client.OpenStream(ctx)
			if err != nil {
				s.log.Warn("shutdown: open stream", "err", err)
				return
			}
			defer stream.Close()
			if _, err := agentclient.Call(ctx, stream, agentapi.Request{Op: agentapi.OpShutdown, Shutdown: &agentapi.ShutdownRequest{}}); err != nil {
				s.log.Debug("shutdown call", "err", err)
			}
		}()
	}
	select {
	case ex := <-inst.Wait():
		return ex
	case <-ctx.Done():
		s.log.Warn("guest did not power off in time; killing qemu", "component", "supervisor", "timeout", shutdownTimeout)
		inst.Kill()
		return <-inst.Wait()
	}
}

// markDown says the VM is down, once.
func (s *Supervisor) markDown() { s.downOnce.Do(func() { close(s.downc) }) }

// requestStop starts a clean shutdown once.
func (s *Supervisor) requestStop() {
	s.stopOnce.Do(func() { close(s.stopc) })
}

type vmmLog struct{ log *slog.Logger }

func (v vmmLog) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if line != "" {
			v.log.Warn(line, "component", "vm")
		}
	}
	return len(p), nil
}

var _ io.Writer = vmmLog{}
