package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/sbx-dev/sbx/internal/vm"
)

// monitor is the QMP connection of one QEMU: commands, and the events the
// instance waits on (the guest opening the agent port).
type monitor struct {
	mon *qmp.SocketMonitor

	mu        sync.Mutex
	agentOpen bool          // guarded by mu
	openc     chan struct{} // closed when agentOpen becomes true
	done      chan struct{} // closed when the event stream ends
}

// connectMonitor connects to QEMU's QMP socket, which QEMU creates shortly
// after it starts, and starts reading its events.
func connectMonitor(ctx context.Context, path string, exited <-chan struct{}) (*monitor, error) {
	for {
		ref, done, err := socketRef(path)
		var mon *qmp.SocketMonitor
		if err == nil {
			mon, err = qmp.NewSocketMonitor("unix", ref, 5*time.Second)
			done()
		}
		if err == nil {
			connected := make(chan error, 1)
			go func() { connected <- mon.Connect() }()
			var err error
			select {
			case err = <-connected:
			case <-ctx.Done():
				err = ctx.Err()
			}
			if err != nil {
				// Disconnect only once the handshake returned (go-qemu's
				// Connect and Disconnect share state): it returns when QEMU
				// dies, which the caller's Kill brings about.
				go func() {
					<-connected
					mon.Disconnect()
				}()
				return nil, fmt.Errorf("qmp handshake: %w", err)
			}
			m := &monitor{mon: mon, openc: make(chan struct{}), done: make(chan struct{})}
			events, err := mon.Events(context.Background())
			if err != nil {
				mon.Disconnect()
				return nil, fmt.Errorf("qmp events: %w", err)
			}
			go m.readEvents(events)
			return m, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("qemu: %w", vm.ErrVMExitedEarly)
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to qmp socket: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// readEvents drains the event stream (the library blocks command replies
// while an event waits to be read).
func (m *monitor) readEvents(events <-chan qmp.Event) {
	defer close(m.done)
	for ev := range events {
		if ev.Event != "VSERPORT_CHANGE" {
			continue
		}
		if id, _ := ev.Data["id"].(string); id != agentPortID {
			continue
		}
		open, _ := ev.Data["open"].(bool)
		m.mu.Lock()
		if open && !m.agentOpen {
			m.agentOpen = true
			close(m.openc)
		}
		m.mu.Unlock()
	}
}

// withContext runs f, returning early with ctx's error when ctx ends
// first (go-qemu's calls have no deadline; the caller then kills QEMU,
// which ends f).
func withContext(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run executes one QMP command and decodes its "return" into out (may be
// nil). It gives up when ctx ends.
func (m *monitor) run(ctx context.Context, cmd string, args any, out any, file *os.File) error {
	c := map[string]any{"execute": cmd}
	if args != nil {
		c["arguments"] = args
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	var raw []byte
	err = withContext(ctx, func() error {
		var err error
		raw, err = m.mon.RunWithFile(b, file)
		return err
	})
	if err != nil {
		select {
		case <-m.done:
			// The event stream ended with the connection: QEMU is gone.
			return fmt.Errorf("qmp %s: %w", cmd, vm.ErrVMExitedEarly)
		default:
		}
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if out == nil {
		return nil
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return nil
}

func (m *monitor) status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	err := m.run(ctx, "query-status", nil, &st, nil)
	return st.Status, err
}

// waitLoaded waits until an incoming migration has ended and says whether
// the state loaded. QEMU exits when a load fails; exited reports that.
func (m *monitor) waitLoaded(ctx context.Context, exited <-chan struct{}) error {
	for {
		st, err := m.status(ctx)
		if err != nil {
			select {
			case <-exited:
				return fmt.Errorf("%w: qemu exited while loading it", vm.ErrRestore)
			default:
			}
			return fmt.Errorf("%w: %w", vm.ErrRestore, err)
		}
		switch st {
		case "inmigrate":
		case "paused", "prelaunch", "running":
			return nil
		default:
			return fmt.Errorf("%w: the vm is %s after loading it", vm.ErrRestore, st)
		}
		select {
		case <-exited:
			return fmt.Errorf("%w: qemu exited while loading it", vm.ErrRestore)
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", vm.ErrRestore, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// save stops the CPUs and migrates the VM's state into f.
func (m *monitor) save(ctx context.Context, f *os.File) error {
	if err := m.run(ctx, "stop", nil, nil, nil); err != nil {
		return err
	}
	// Not bounded by ctx: the caller closes f after Save returns, and the
	// descriptor must not be closed while it is being sent.
	if err := m.run(context.WithoutCancel(ctx), "getfd", map[string]any{"fdname": "snapshot"}, nil, f); err != nil {
		return err
	}
	if err := m.run(ctx, "migrate", map[string]any{"uri": "fd:snapshot"}, nil, nil); err != nil {
		return err
	}
	for {
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := m.run(ctx, "query-migrate", nil, &mi, nil); err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			if mi.ErrorDesc == "" {
				mi.ErrorDesc = mi.Status
			}
			return fmt.Errorf("save vm state: %s", mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// setIgnoreShared leaves RAM backed by a shared memory file out of the
// migration stream, on the saving and on the loading side.
func (m *monitor) setIgnoreShared(ctx context.Context) error {
	return m.run(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil, nil)
}

func (m *monitor) close() {
	m.mon.Disconnect()
}

var errNoMonitor = errors.New("qemu: the vm has no monitor (vm.Config.Monitor)")
