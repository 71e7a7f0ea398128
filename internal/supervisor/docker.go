package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
)

// DockerDiskSerial is the virtio-blk serial of the disk that holds the
// guest's /var/lib/docker; the guest agent finds the disk by it.
const DockerDiskSerial = snapshot.DockerSerial

// dockerDiskLabel is the ext4 label of the docker disk.
const dockerDiskLabel = "sbx-docker"

// ensureDockerDisk makes path a sparse ext4 image of size bytes when it
// does not exist (formatted in a temp file, then renamed, so a crash
// leaves no half-made disk), and grows a smaller one (the guest grows its
// file system to the disk at mount). It never shrinks a disk.
func ensureDockerDisk(ctx context.Context, path string, size int64) (created bool, err error) {
	if size <= 0 {
		return false, fmt.Errorf("docker disk size %d", size)
	}
	fi, err := os.Stat(path)
	if err == nil {
		if fi.Size() < size {
			if err := os.Truncate(path, size); err != nil {
				return false, fmt.Errorf("grow docker disk: %w", err)
			}
		}
		return false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("docker disk: %w", err)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return false, fmt.Errorf("format the docker disk: mkfs.ext4 not found (apt-get install e2fsprogs): %w", err)
	}
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, fmt.Errorf("create docker disk: %w", err)
	}
	defer os.Remove(tmp)
	if err := f.Truncate(size); err != nil {
		f.Close()
		return false, fmt.Errorf("create docker disk: %w", err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("create docker disk: %w", err)
	}
	// mkfs discards (punches) the whole file first, so the inode tables
	// count as zeroed and the guest kernel has no lazy init to do; the
	// journal is left as holes, which read as zeros: about 4 MiB written
	// for any size. No blocks are reserved for root: only dockerd writes.
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-L", dockerDiskLabel, "-m", "0", "-E", "lazy_journal_init=1", tmp).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("format the docker disk: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("create docker disk: %w", err)
	}
	return true, nil
}

// dockerSetup attaches the sandbox's docker disk, creating it on first
// use, and returns the guest's Docker setup; nil when the sandbox has no
// Docker.
func (s *Supervisor) dockerSetup(ctx context.Context) (*agentapi.DockerSetup, string, error) {
	size := s.sb.Config.DockerDiskBytes
	if size <= 0 {
		return nil, "", nil
	}
	path := s.sb.Path(sandbox.DockerDiskFile)
	created, err := ensureDockerDisk(ctx, path, size)
	if err != nil {
		return nil, "", err
	}
	if created {
		s.log.Info("docker disk created", "component", "supervisor", "path", path, "bytes", size)
	}
	return &agentapi.DockerSetup{DiskSerial: DockerDiskSerial}, path, nil
}

// gitSetup is the host user's git identity for the guest, if any.
func gitSetup(g *sandbox.GitIdentity) *agentapi.GitIdentity {
	if g == nil || (g.Name == "" && g.Email == "") {
		return nil
	}
	return &agentapi.GitIdentity{Name: g.Name, Email: g.Email}
}
