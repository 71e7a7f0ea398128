package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/sbx-dev/sbx/internal/disk"
	"github.com/sbx-dev/sbx/internal/jail"
	"github.com/sbx-dev/sbx/internal/vm"
)

// jailed is a prepared jail: the command and what to remove after QEMU
// exits.
type jailed struct {
	cmd  *exec.Cmd
	root string // the empty jail root folder on the host; "" without one
}

func (j *jailed) cleanup() {
	if j.root != "" {
		os.Remove(j.root)
	}
}

// prepareJail builds the jail QEMU runs in for cfg (cfg.Jail is set): it
// lists what QEMU needs (kernel, initramfs and the disks' backing chain
// read-only; its disks, shares, console log, memory file and socket
// folders read-write), makes the files sbx created for this VM the jail
// user's, and returns the command.
func prepareJail(cfg vm.Config, binary string, args []string) (*jailed, error) {
	j := cfg.Jail
	spec := jail.Spec{Argv: append([]string{binary}, args...), Env: []string{"PATH=/usr/bin:/bin"}, UID: j.UID, GID: j.GID}
	if cfg.RestoreFrom != "" {
		spec.KeepFDs = 1 // the saved state, restoreFD
	}
	if !j.NewRoot {
		cmd, err := jail.Command(spec)
		return &jailed{cmd: cmd}, err
	}
	if j.UID <= 0 || j.GID <= 0 {
		return nil, fmt.Errorf("jail: refusing to run qemu as uid %d gid %d", j.UID, j.GID)
	}
	own := func(p string) error {
		if err := os.Lchown(p, j.UID, j.GID); err != nil {
			return fmt.Errorf("jail: give %s to uid %d: %w", p, j.UID, err)
		}
		return nil
	}
	// Read-only inputs the VMM user must be able to read: sbx's own cache
	// files, in folders only root can enter, so opening them to others
	// shows them to no one else.
	readable := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("jail: %w", err)
		}
		if fi.Mode().Perm()&0o004 == 0 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o444); err != nil {
				return fmt.Errorf("jail: let the vm user read %s: %w", p, err)
			}
		}
		return nil
	}
	for _, p := range []string{cfg.Kernel, cfg.Initrd} {
		if err := readable(p); err != nil {
			return nil, err
		}
		spec.ReadOnly = append(spec.ReadOnly, p)
	}
	if !underSystemDirs(binary) {
		spec.Exec = append(spec.Exec, binary)
	}
	for _, d := range cfg.Disks {
		// The header of a read-write disk is the VMM user's to write:
		// root follows it only into sbx's own images.
		chain, err := disk.Chain(d.Path, d.Format, j.Backing)
		if err != nil {
			return nil, fmt.Errorf("jail: %w (the disk may have been tampered with; remove the sandbox with `sbx rm`)", err)
		}
		for _, b := range chain {
			if err := readable(b); err != nil {
				return nil, err
			}
			spec.ReadOnly = append(spec.ReadOnly, b)
		}
		if d.ReadOnly {
			if err := readable(d.Path); err != nil {
				return nil, err
			}
			spec.ReadOnly = append(spec.ReadOnly, d.Path)
			continue
		}
		if err := own(d.Path); err != nil {
			return nil, err
		}
		spec.ReadWrite = append(spec.ReadWrite, d.Path)
	}
	for _, s := range cfg.Shares {
		// The user's folders: never chowned; the VMM user is their owner.
		// The guest may have changed them (through another workspace):
		// guarded.
		spec.Guarded = append(spec.Guarded, s.Path)
		if s.Of() == vm.TransportVirtioFS {
			continue // the file server's, not QEMU's
		}
		if s.ReadOnly {
			spec.ReadOnly = append(spec.ReadOnly, s.Path)
		} else {
			spec.ReadWrite = append(spec.ReadWrite, s.Path)
		}
	}
	if cfg.ConsoleLog != "" {
		f, err := os.OpenFile(cfg.ConsoleLog, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("jail: console log: %w", err)
		}
		f.Close()
		if err := own(cfg.ConsoleLog); err != nil {
			return nil, err
		}
		spec.ReadWrite = append(spec.ReadWrite, cfg.ConsoleLog)
	}
	if cfg.MemoryFile != "" {
		if cfg.MemoryShared {
			// QEMU sizes an existing file; it must exist to be bound.
			f, err := os.OpenFile(cfg.MemoryFile, os.O_CREATE|os.O_WRONLY, 0o600)
			if err != nil {
				return nil, fmt.Errorf("jail: memory file: %w", err)
			}
			f.Close()
			if err := own(cfg.MemoryFile); err != nil {
				return nil, err
			}
		}
		// A resumed VM maps it copy-on-write, but QEMU 7.2 opens it
		// read-write: it must be the VMM user's (snapshots are kept per
		// VMM user for this reason).
		spec.ReadWrite = append(spec.ReadWrite, cfg.MemoryFile)
	}
	var sockDirs []string
	for _, p := range []string{cfg.AgentSocket, cfg.Monitor} {
		if p != "" {
			sockDirs = append(sockDirs, filepath.Dir(p))
		}
	}
	if cfg.Net != nil {
		sockDirs = append(sockDirs, filepath.Dir(cfg.Net.Socket))
		if err := own(cfg.Net.Socket); err != nil {
			return nil, err
		}
	}
	slices.Sort(sockDirs)
	for _, d := range slices.Compact(sockDirs) {
		if err := own(d); err != nil {
			return nil, err
		}
		spec.ReadWrite = append(spec.ReadWrite, d)
	}
	if cfg.Accel == vm.AccelKVM {
		spec.Devices = append(spec.Devices, "/dev/kvm")
		var st syscall.Stat_t
		if err := syscall.Stat("/dev/kvm", &st); err == nil && st.Gid != 0 {
			spec.Groups = append(spec.Groups, int(st.Gid))
		}
	}
	root, err := os.MkdirTemp("", "sbx-jail-")
	if err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	spec.Root = root
	cmd, err := jail.Command(spec)
	if err != nil {
		os.Remove(root)
		return nil, err
	}
	return &jailed{cmd: cmd, root: root}, nil
}

func underSystemDirs(p string) bool {
	for _, d := range jail.SystemDirs {
		if strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}
