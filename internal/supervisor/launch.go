package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// ErrStartFailed wraps every failure of a supervisor to bring its VM up.
var ErrStartFailed = errors.New("sandbox failed to start")

// Client returns the control API client of sandbox sb.
func Client(store *sandbox.Store, sb *sandbox.Sandbox) *controlapi.Client {
	return controlapi.NewClient(filepath.Join(store.Dirs().RuntimeDir(sb.Config.ID), sandbox.ControlSocket))
}

// Launch starts a supervisor for sb with boot and waits until the sandbox is
// running. The caller holds the sandbox's lock and has checked that no
// supervisor runs. progress, if not nil, is called with each new status
// while the sandbox boots. On failure the returned error says why and names
// the log to read.
func Launch(ctx context.Context, store *sandbox.Store, sb *sandbox.Sandbox, boot Boot, progress func(controlapi.Status)) error {
	if err := WriteBoot(store, sb, boot); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the sbx binary: %w", err)
	}
	logf, err := os.OpenFile(sb.Path(sandbox.SupervisorLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open supervisor log: %w", err)
	}
	defer logf.Close()
	// The supervisor outlives this command: its own session, no terminal,
	// its output in supervisor.log.
	cmd := exec.Command(exe, "supervise", sb.Config.ID)
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if Protected(sb.Config) {
		// Protected paths are read-only bind mounts in a mount namespace
		// of the supervisor's own, which QEMU inherits.
		if os.Geteuid() != 0 {
			return fmt.Errorf("sandbox %s: %w; run sbx as root (sudo), or recreate the sandbox without --protect/--protect-defaults", sb.Config.Name, ErrProtectNeedsRoot)
		}
		cmd.SysProcAttr.Cloneflags = protectCloneflags
	}
	if err := cmd.Start(); err != nil {
		if Protected(sb.Config) {
			return fmt.Errorf("start supervisor in its own mount namespace (for the protected paths): %w", err)
		}
		return fmt.Errorf("start supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	err = WaitUp(ctx, store, sb, exited, progress)
	switch {
	case err == nil:
		_ = cmd.Process.Release()
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	return err
}

// WriteBoot writes boot as sb's boot.json, which the supervisor reads
// (New), and makes sb's runtime folder.
func WriteBoot(store *sandbox.Store, sb *sandbox.Sandbox, boot Boot) error {
	boot.Version = BootVersion
	data, err := json.MarshalIndent(boot, "", "  ")
	if err != nil {
		return err
	}
	if err := sandbox.WriteFileAtomic(sb.Path(sandbox.BootFile), append(data, '\n'), 0o600); err != nil {
		return err
	}
	_, err = store.Dirs().EnsureRuntimeDir(sb.Config.ID)
	return err
}

// WaitUp waits for sb's starting supervisor to report running (nil), to
// fail or exit (exited receives) with ErrStartFailed, or for ctx to end;
// progress gets each new phase.
func WaitUp(ctx context.Context, store *sandbox.Store, sb *sandbox.Sandbox, exited <-chan error, progress func(controlapi.Status)) error {
	client := Client(store, sb)
	var last controlapi.Status
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			return fmt.Errorf("%w: %s", ErrStartFailed, lastFailure(store, sb))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		st, err := client.Status(ctx)
		if err != nil {
			continue // not listening yet
		}
		if progress != nil && (st.Phase != last.Phase || st.State != last.State || len(st.Phases) != len(last.Phases)) {
			progress(st)
		}
		last = st
		switch st.State {
		case controlapi.StateRunning:
			return nil
		case controlapi.StateFailed:
			return fmt.Errorf("%w: %s", ErrStartFailed, st.Error)
		}
	}
}

// lastFailure explains a supervisor that exited during start, from its
// recorded state or the end of its log.
func lastFailure(store *sandbox.Store, sb *sandbox.Sandbox) string {
	if st, err := store.ReadState(sb); err == nil && st.Reason != "" {
		return st.Reason
	}
	data, _ := os.ReadFile(sb.Path(sandbox.SupervisorLog))
	lines := strings.Split(strings.TrimSpace(string(bytes.ToValidUTF8(data, nil))), "\n")
	if n := len(lines); n > 0 && lines[n-1] != "" {
		return "the supervisor exited: " + lines[n-1] + " (see " + sb.Path(sandbox.SupervisorLog) + ")"
	}
	return "the supervisor exited; see " + sb.Path(sandbox.SupervisorLog)
}

// WaitGone waits until the supervisor process pid has exited or ctx ends.
func WaitGone(ctx context.Context, pid int, id string) error {
	for sandbox.SupervisorAlive(pid, id) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
