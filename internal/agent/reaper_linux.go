package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// ReapMode says which children a Reaper waits for.
type ReapMode int

const (
	// ReapRegistered waits only for processes started through the Reaper;
	// for use in an ordinary process (tests) that has other children.
	ReapRegistered ReapMode = iota
	// ReapAll waits for every child, discarding the status of the ones not
	// started through the Reaper (orphans re-parented to PID 1).
	ReapAll
)

// Reaper is the single waiter for child processes. Nothing else in the
// process may wait for children (no exec.Cmd.Wait, no os.Process.Wait):
// in ReapAll mode it would steal their statuses.
type Reaper struct {
	log  *slog.Logger
	mode ReapMode
	kick chan struct{}

	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus // guarded by mu
}

// NewReaper returns a Reaper; it does nothing until Run.
func NewReaper(log *slog.Logger, mode ReapMode) *Reaper {
	return &Reaper{log: log, mode: mode, kick: make(chan struct{}, 1), waiters: map[int]chan unix.WaitStatus{}}
}

// Run waits for children on every SIGCHLD until ctx is done. Call it once,
// in its own goroutine.
func (r *Reaper) Run(ctx context.Context) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		case <-r.kick:
		}
		r.reap()
	}
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mode == ReapAll {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				return
			}
			r.dispatchLocked(pid, ws)
		}
	}
	for pid := range r.waiters {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			got, err = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
		if err == nil && got == pid {
			r.dispatchLocked(pid, ws)
		}
	}
}

// Preconditions: r.mu is held.
func (r *Reaper) dispatchLocked(pid int, ws unix.WaitStatus) {
	ch, ok := r.waiters[pid]
	if !ok {
		r.log.Debug("reaped orphan", "pid", pid, "status", int(ws))
		return
	}
	delete(r.waiters, pid)
	ch <- ws
}

// Start runs start, which must start exactly one child and return its pid,
// and registers the pid before any wait can see it exit. The returned
// channel receives the child's wait status once. If start fails, nothing is
// registered and its error is returned.
func (r *Reaper) Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	pid, err := start()
	if err != nil {
		r.mu.Unlock()
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	r.mu.Unlock()
	// The child may have exited before it was registered (ReapRegistered
	// mode consumed its SIGCHLD already): look once more.
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return pid, ch, nil
}
