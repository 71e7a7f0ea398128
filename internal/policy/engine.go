package policy

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultWatchInterval is how often Watch polls the policy file: the
// longest a change takes to reach a running sandbox.
const DefaultWatchInterval = 200 * time.Millisecond

// EngineOptions configures an Engine.
type EngineOptions struct {
	// SpecialAddrs are the host's own addresses (or networks): no host
	// pattern or preset covers them.
	SpecialAddrs []netip.Prefix
	// Logger receives reload messages; nil discards them.
	Logger *slog.Logger
}

// Engine is the live policy of a process: the compiled Set of the store's
// file, swapped atomically when the file changes. Evaluate is safe for
// concurrent use and never blocks on I/O.
type Engine struct {
	store   *Store
	special []netip.Prefix
	log     *slog.Logger
	set     atomic.Pointer[Set]

	mu    sync.Mutex
	stamp fileStamp // guarded by mu
	err   error     // guarded by mu
}

// NewEngine loads the store's file and returns an engine evaluating it. It
// never fails: a file that cannot be loaded makes the engine deny
// everything, and the error is returned alongside (and by Err) so the
// caller can report it.
func NewEngine(store *Store, opts EngineOptions) (*Engine, error) {
	e := &Engine{store: store, special: opts.SpecialAddrs, log: opts.Logger}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	err := e.Reload()
	return e, err
}

// Evaluate decides req against the current Set.
func (e *Engine) Evaluate(req Request) Decision { return e.set.Load().Evaluate(req) }

// Set returns the current compiled set.
func (e *Engine) Set() *Set { return e.set.Load() }

// Err returns the error of the last load, nil when the policy is in force.
func (e *Engine) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// Reload reads and compiles the file now and swaps the Set in. On error the
// engine denies everything until a good file is loaded (fail closed), and
// the error (a *FileError for a malformed file) is returned.
func (e *Engine) Reload() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reloadLocked()
}

// Preconditions: e.mu is held.
func (e *Engine) reloadLocked() error {
	e.stamp = statFile(e.store.Path())
	f, err := e.store.Load()
	var set *Set
	if err == nil {
		set, err = Compile(f, e.special...)
	}
	if err != nil {
		set = DenyAll(err)
	}
	e.set.Store(set)
	if err != nil && (e.err == nil || e.err.Error() != err.Error()) {
		e.log.Error("policy cannot be used; denying all network access", "component", "policy", "err", err)
	} else if err == nil && e.err != nil {
		e.log.Info("policy loaded again", "component", "policy")
	}
	e.err = err
	return err
}

// Watch polls the file every interval (DefaultWatchInterval when 0) and
// reloads it when its inode, size or modification time changed. It returns
// when ctx is done, with nil. Run it at most once per engine.
func (e *Engine) Watch(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		e.mu.Lock()
		if st := statFile(e.store.Path()); st != e.stamp {
			if err := e.reloadLocked(); err == nil {
				e.log.Debug("policy reloaded", "component", "policy")
			}
		}
		e.mu.Unlock()
	}
}

// fileStamp identifies a version of the file cheaply.
type fileStamp struct {
	exists bool
	ino    uint64
	dev    uint64
	size   int64
	mtime  int64
	ctime  int64
	err    string
}

func statFile(path string) fileStamp {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}
	}
	if err != nil {
		return fileStamp{err: err.Error()}
	}
	st := fileStamp{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino, st.dev = sys.Ino, uint64(sys.Dev)
		st.ctime = sys.Ctim.Nano()
	}
	return st
}
