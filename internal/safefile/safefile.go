// Package safefile holds the file operations sbx shares: for every store,
// an exclusive lock file shared across processes (flock), and a write that
// readers see whole or not at all (temp file, fsync, rename); and for
// content a guest or an image controls, a bounded read of a regular file
// that follows no link and never blocks (ReadRegular).
package safefile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBusy is returned by TryLock when another process holds the lock.
var ErrBusy = errors.New("locked by another sbx command")

// lockPoll is how often Lock retries a held lock.
const lockPoll = 50 * time.Millisecond

// Lock takes an exclusive flock on path, creating the file (mode 0600) and
// its folder (0700) if needed, and waits until the lock is free or ctx is
// done. The returned func releases it; the lock also ends with the process.
func Lock(ctx context.Context, path string) (func(), error) {
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	for {
		err := flock(f, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for lock %s (another sbx command holds it): %w", path, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// TryLock is Lock without waiting: it fails with ErrBusy when the lock is
// held.
func TryLock(path string) (func(), error) {
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrBusy
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func open(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create lock folder: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	return f, nil
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Write writes data to a temporary file beside path (named
// ".<base>.tmp*"), syncs it, gives it mode and renames it over path, so
// readers see the old or the new content, never a mix.
func Write(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// RemoveTemps deletes the entries of dir whose names start with prefix:
// leftovers of a build that was interrupted. Call it only while holding
// the lock that guards dir's builds.
func RemoveTemps(dir, prefix string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}
