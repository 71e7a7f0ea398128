package snapshot

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/sbx-dev/sbx/internal/lease"
	"github.com/sbx-dev/sbx/internal/safefile"
)

func leasesDir(dir, key string) string { return filepath.Join(dir, ".leases", key) }

// Lease records that the sandbox disk at diskPath is backed by snapshot
// key, so no collection removes the snapshot while the disk exists
// (package lease).
func Lease(cacheDir, key, diskPath string) error {
	return lease.Write(leasesDir(Dir(cacheDir), key), diskPath)
}

// Release drops the lease of the disk at diskPath on snapshot key (its
// sandbox is being removed).
func Release(cacheDir, key, diskPath string) {
	lease.Drop(leasesDir(Dir(cacheDir), key), diskPath)
}

// pendingLease holds snapshot key for lease.Grace, until the create
// Ensure answers has written its own lease.
func pendingLease(dir, key string) error { return lease.Pending(leasesDir(dir, key)) }

// leased reports whether a live lease holds snapshot key.
func leased(dir, key string) bool { return lease.Live(leasesDir(dir, key)) }

// keepPerFamily is how many of the newest snapshots of a family are kept
// unleased: two sbx builds (or settings) sharing a cache would otherwise
// delete each other's, and each create would save one again.
const keepPerFamily = 2

// collect removes snapshots no sandbox disk uses that are stale: their
// template image is gone, or keepPerFamily newer snapshots of the same
// family exist, or keep (when not nil) says no. It also removes leases of
// removed snapshots. The caller holds the lock.
func collect(dir string, keep func(Meta) bool) int64 {
	all := metas(dir)
	newer := map[string]int{} // key -> snapshots of its family made after it
	for _, m := range all {
		for _, o := range all {
			if o.Family == m.Family && o.Created.After(m.Created) {
				newer[m.Key]++
			}
		}
	}
	var freed int64
	for _, m := range all {
		stale := newer[m.Key] >= keepPerFamily
		if _, err := os.Stat(m.Spec.TemplateImage); errors.Is(err, fs.ErrNotExist) {
			stale = true
		}
		if keep != nil && !keep(m) {
			stale = true
		}
		// leased runs for every snapshot: it also prunes dead leases.
		if live := leased(dir, m.Key); live || !stale {
			continue
		}
		freed += du(filepath.Join(dir, m.Key))
		os.RemoveAll(filepath.Join(dir, m.Key))
		os.RemoveAll(leasesDir(dir, m.Key))
	}
	if lds, err := os.ReadDir(filepath.Join(dir, ".leases")); err == nil {
		for _, l := range lds {
			if _, err := os.Stat(filepath.Join(dir, l.Name())); errors.Is(err, fs.ErrNotExist) {
				os.RemoveAll(leasesDir(dir, l.Name()))
			}
		}
	}
	return freed
}

// Collect removes snapshots nothing uses any more (see collect), taking
// the snapshots lock. It returns the bytes freed.
func Collect(cacheDir string) (int64, error) {
	dir := Dir(cacheDir)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	unlock, err := safefile.Lock(context.Background(), filepath.Join(dir, ".lock"))
	if err != nil {
		return 0, err
	}
	defer unlock()
	return collect(dir, nil), nil
}

func du(root string) int64 {
	var n int64
	filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
