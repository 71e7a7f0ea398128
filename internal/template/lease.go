package template

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sbx-dev/sbx/internal/lease"
)

// Leases record which sandbox disks an image backs, across every SBX_HOME
// sharing the cache:
//
//	<cacheDir>/templates/.leases/<id>/           made with the image: "tracked"
//	<cacheDir>/templates/.leases/<id>/<hash>     one per disk: the disk's path
//
// A lease is live while its disk file exists (see package lease for the
// grace given to creates under way). An image no manifest names
// and no live lease holds is garbage; images from before leases existed
// (no .leases/<id> folder) are never collected.

func leasesDir(dir, id string) string { return filepath.Join(dir, ".leases", id) }

// track marks image id as lease-tracked. The caller holds the lock.
func track(dir, id string) error {
	if err := os.MkdirAll(leasesDir(dir, id), 0o700); err != nil {
		return fmt.Errorf("track template image: %w", err)
	}
	return nil
}

// Lease records that the sandbox disk at diskPath is backed by template
// image id, so no template removal or rebuild deletes the image while the
// disk exists (package lease).
func Lease(cacheDir, id, diskPath string) error {
	dir := templatesDir(cacheDir)
	if err := track(dir, id); err != nil {
		return err
	}
	return lease.Write(leasesDir(dir, id), diskPath)
}

// Release drops the lease of the disk at diskPath on image id (its
// sandbox is being removed).
func Release(cacheDir, id, diskPath string) {
	lease.Drop(leasesDir(templatesDir(cacheDir), id), diskPath)
}

// leased reports whether a live lease holds image id.
func leased(dir, id string) bool { return lease.Live(leasesDir(dir, id)) }

// tracked reports whether image id was made since leases exist.
func tracked(dir, id string) bool {
	st, err := os.Stat(leasesDir(dir, id))
	return err == nil && st.IsDir()
}

// collect deletes template images that no manifest names and no live
// lease holds, and the leases folders of images that are gone. The caller
// holds the lock. It returns the number of bytes freed (allocated).
func collect(dir string) (int64, error) {
	named := map[string]bool{}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		if t, err := lookupFile(dir, name, e.Name()); err == nil {
			named[t.ID] = true
		}
	}
	var freed int64
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".ext4")
		if !ok || named[id] || !tracked(dir, id) || leased(dir, id) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if info, err := os.Stat(p); err == nil {
			freed += allocated(info)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return freed, fmt.Errorf("remove unused template image: %w", err)
		}
		os.RemoveAll(leasesDir(dir, id))
	}
	// Leases of images removed by hand.
	if lds, err := os.ReadDir(filepath.Join(dir, ".leases")); err == nil {
		for _, l := range lds {
			if _, err := os.Stat(filepath.Join(dir, l.Name()+".ext4")); errors.Is(err, fs.ErrNotExist) {
				os.RemoveAll(leasesDir(dir, l.Name()))
			}
		}
	}
	return freed, nil
}

// Collect deletes template images nothing uses any more (see collect),
// taking the templates lock.
func Collect(ctx context.Context, cacheDir string) (int64, error) {
	dir := templatesDir(cacheDir)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return 0, err
	}
	defer unlock()
	return collect(dir)
}
