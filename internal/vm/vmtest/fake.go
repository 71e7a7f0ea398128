// Package vmtest provides a fake vm.Backend for tests: each "VM" is the
// real guest agent server (internal/agent) running in the test process and
// connected over an in-memory pipe, so the supervisor, the control API and
// the agent protocol are exercised end to end without QEMU. Commands run on
// the host as the current user.
package vmtest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agent"
	"github.com/sbx-dev/sbx/internal/vm"
)

// Backend is a fake vm.Backend. Instances records every instance made, in
// order.
type Backend struct {
	// User is the user exec requests run as when they name none or name
	// "agent" (normally the current user's name).
	User string
	// FailRestore makes every Start of a VM with a RestoreFrom fail with
	// vm.ErrRestore, as a damaged or foreign snapshot would.
	FailRestore bool

	mu        sync.Mutex
	instances []*Instance // guarded by mu
}

var _ vm.Backend = (*Backend)(nil)

// Name implements vm.Backend.
func (b *Backend) Name() string { return "fake" }

// New implements vm.Backend.
func (b *Backend) New(_ context.Context, cfg vm.Config, log *slog.Logger) (vm.Instance, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	i := &Instance{cfg: cfg, log: log, user: b.User, failRestore: b.FailRestore, waitc: make(chan vm.Exit, 1), done: make(chan struct{})}
	b.mu.Lock()
	b.instances = append(b.instances, i)
	b.mu.Unlock()
	return i, nil
}

// Instances returns the instances made so far.
func (b *Backend) Instances() []*Instance {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Instance(nil), b.instances...)
}

// Instance is one fake VM.
type Instance struct {
	cfg         vm.Config
	log         *slog.Logger
	user        string
	failRestore bool

	mu     sync.Mutex
	host   net.Conn                // guarded by mu
	setups []agentapi.SetupRequest // guarded by mu
	exited bool                    // guarded by mu
	cancel context.CancelFunc      // guarded by mu

	wg    sync.WaitGroup
	waitc chan vm.Exit
	done  chan struct{}
}

var _ vm.Instance = (*Instance)(nil)

// Config is the vm.Config the instance was made with.
func (i *Instance) Config() vm.Config { return i.cfg }

// Setups returns the setup requests the guest received.
func (i *Instance) Setups() []agentapi.SetupRequest {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]agentapi.SetupRequest(nil), i.setups...)
}

// Start implements vm.Instance: it starts the agent server on one end of a
// pipe and returns with the other end as the agent channel.
func (i *Instance) Start(ctx context.Context, _ io.Writer) error {
	if i.failRestore && i.cfg.RestoreFrom != "" {
		return fmt.Errorf("%w: fake backend told to fail", vm.ErrRestore)
	}
	host, guest := net.Pipe()
	sctx, cancel := context.WithCancel(context.Background())
	reaper := agent.NewReaper(i.log, agent.ReapRegistered)
	srv, err := agent.NewServer(agent.Config{
		Log:         i.log,
		Reaper:      reaper,
		DefaultUser: i.user,
		Setup: func(_ context.Context, req *agentapi.SetupRequest) error {
			i.mu.Lock()
			i.setups = append(i.setups, *req)
			i.mu.Unlock()
			return nil
		},
		PowerOff: func() { i.exit(vm.Exit{Code: 0}) },
	})
	if err != nil {
		cancel()
		return err
	}
	i.mu.Lock()
	i.host = host
	i.cancel = cancel
	i.mu.Unlock()
	i.wg.Add(2)
	go func() {
		defer i.wg.Done()
		reaper.Run(sctx)
	}()
	go func() {
		defer i.wg.Done()
		_ = srv.Serve(sctx, guest)
	}()
	return nil
}

// exit ends the fake VM once, with ex.
func (i *Instance) exit(ex vm.Exit) {
	i.mu.Lock()
	if i.exited {
		i.mu.Unlock()
		return
	}
	i.exited = true
	cancel, host := i.cancel, i.host
	i.mu.Unlock()
	if host != nil {
		host.Close()
	}
	if cancel != nil {
		cancel()
	}
	go func() {
		i.wg.Wait()
		ex.At = time.Now()
		i.waitc <- ex
		close(i.waitc)
		close(i.done)
	}()
}

// Crash ends the VM as if its VMM process had been killed.
func (i *Instance) Crash() { i.exit(vm.Exit{Code: -1, Signal: "killed"}) }

// Done is closed when the fake VM has ended and its goroutines returned.
func (i *Instance) Done() <-chan struct{} { return i.done }

// AgentConn implements vm.Instance.
func (i *Instance) AgentConn() net.Conn {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.host
}

// PID implements vm.Instance; the fake has no process.
func (i *Instance) PID() int { return 0 }

// Wait implements vm.Instance.
func (i *Instance) Wait() <-chan vm.Exit { return i.waitc }

// Kill implements vm.Instance.
func (i *Instance) Kill() error {
	i.exit(vm.Exit{Code: -1, Signal: "killed"})
	return nil
}
