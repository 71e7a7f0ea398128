package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/api/agentapi"
)

var machineIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// setIdentity applies the per-start identity: the random pool first (so
// nothing after it draws from the snapshot's), then the clock, then the
// machine id. All steps are attempted.
func (g *Guest) setIdentity(id *agentapi.Identity) error {
	var errs []error
	if len(id.Seed) > 0 {
		if err := reseedRandom(id.Seed); err != nil {
			errs = append(errs, err)
		}
	}
	if id.TimeUnixNano > 0 {
		ts := unix.NsecToTimespec(id.TimeUnixNano)
		before := time.Now()
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			errs = append(errs, fmt.Errorf("set the clock: %w", err))
		} else if d := time.Unix(0, id.TimeUnixNano).Sub(before); d > time.Second || d < -time.Second {
			g.log.Info("clock set from the host", "step", d.Round(time.Millisecond).String())
		}
	}
	if id.MachineID != "" {
		if !machineIDPattern.MatchString(id.MachineID) {
			errs = append(errs, fmt.Errorf("machine id %q is not 32 lowercase hex digits", id.MachineID))
		} else if err := writeMachineID(filepath.Join(g.etc, "machine-id"), id.MachineID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reseedRandom mixes seed into the kernel's input pool, credits it, and
// forces the CRNG to reseed, so two guests resumed from one snapshot read
// different bytes from /dev/urandom from here on.
func reseedRandom(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("reseed the random pool: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	n := (len(seed) + 3) / 4 * 4
	info := make([]byte, 8+n)
	binary.NativeEndian.PutUint32(info[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))
	copy(info[8:], seed)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
			ierr = fmt.Errorf("RNDADDENTROPY: %w", e)
			return
		}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDRESEEDCRNG, 0); e != 0 {
			ierr = fmt.Errorf("RNDRESEEDCRNG: %w", e)
		}
	}); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("reseed the random pool: %w", ierr)
	}
	return nil
}

// writeMachineID replaces /etc/machine-id unless it already holds id.
func writeMachineID(path, id string) error {
	if b, err := os.ReadFile(path); err == nil && string(b) == id+"\n" {
		return nil
	}
	tmp := path + ".sbx-tmp"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o444); err != nil {
		return fmt.Errorf("write machine id: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write machine id: %w", err)
	}
	return nil
}
