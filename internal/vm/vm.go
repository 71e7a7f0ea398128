// Package vm defines the interface between sbx and a virtual machine monitor.
//
// A Backend (QEMU today; Cloud Hypervisor or Firecracker may follow) turns a
// Config into a running Instance. The contract every backend keeps:
//
//   - New prepares but starts nothing; it fails with ErrNotSupported when the
//     backend cannot honour the Config (an accelerator, a device kind).
//   - Start launches the VMM and returns once the guest agent's channel is
//     connected (not once the guest answered: the caller speaks the agent
//     protocol). On failure everything Start created is torn down.
//   - Wait's channel yields exactly one Exit when the VMM process ends, for
//     whatever reason, and is then closed; after a Start that started no
//     process it yields one Exit carrying the error. Start is called once.
//   - Kill is idempotent and safe after a failed Start; it ends the VMM at
//     once. A clean shutdown is the guest's job (the agent's shutdown op),
//     after which Wait reports the exit.
//
// Backends depend on this package, never the reverse; this package imports
// no backend.
package vm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"time"
)

// Errors callers branch on.
var (
	ErrNotSupported  = errors.New("not supported by this backend")
	ErrAgentTimeout  = errors.New("guest agent did not connect in time")
	ErrVMMNotFound   = errors.New("virtual machine monitor not found")
	ErrKVMUnusable   = errors.New("kvm cannot run a guest on this host")
	ErrVMExitedEarly = errors.New("vm exited during start")
	// ErrRestore says a saved state could not be loaded (another QEMU,
	// another device set, a damaged file); a cold boot still works.
	ErrRestore = errors.New("cannot restore the saved vm state")
	// ErrFileServer says a share's file server could not be started; the
	// same VM with 9p shares still can be.
	ErrFileServer = errors.New("the virtio-fs file server did not start")
	// ErrFileServerExited says a share's file server ended while its VM
	// ran; the VM is then stopped rather than left waiting on it.
	ErrFileServerExited = errors.New("the virtio-fs file server exited while the vm ran")
)

// Accel is the CPU accelerator.
type Accel string

// Accelerators.
const (
	AccelKVM Accel = "kvm"
	AccelTCG Accel = "tcg"
)

// Disk is one block device, in order: the first is the root disk (/dev/vda).
type Disk struct {
	Path     string
	Format   string // "qcow2" or "raw"
	ReadOnly bool
	// Serial, if set, is the serial number the guest reads from
	// /sys/block/vdX/serial (at most 20 bytes), so it can find the disk
	// without relying on the order of device names.
	Serial string
}

// Share is a host folder exported to the guest under Tag.
type Share struct {
	Tag      string
	Path     string
	ReadOnly bool
	// Transport is how the guest reaches it; empty is 9p.
	Transport Transport
	// Socket, with TransportVirtioFS, is the unix socket the share's
	// file server (Config.FileServer) listens on for the VMM.
	Socket string
}

// Transport is the device a share crosses into the guest by.
type Transport string

// Transports.
const (
	// Transport9P is a virtio-9p device served by the VMM itself.
	Transport9P Transport = "9p"
	// TransportVirtioFS is a vhost-user-fs device served by a file
	// server beside the VMM (virtiofsd), jailed like it; guest RAM is
	// then shared memory the server maps.
	TransportVirtioFS Transport = "virtiofs"
)

// Of is the share's transport, 9p when unset.
func (s Share) Of() Transport {
	if s.Transport == "" {
		return Transport9P
	}
	return s.Transport
}

// Net is a network card connected to a user-mode network stack.
type Net struct {
	// Socket is the unix socket the network stack listens on; the VMM
	// connects to it and exchanges Ethernet frames, each preceded by its
	// length as 4 bytes big-endian.
	Socket string
	// MAC is the card's address.
	MAC string
}

// Config describes one VM. Paths are absolute.
type Config struct {
	Name      string
	Kernel    string
	Initrd    string
	Cmdline   string
	CPUs      int
	MemoryMiB int
	Accel     Accel
	// TSCkHz is the host TSC frequency, given to TCG guests so their clock
	// runs at the right speed.
	TSCkHz int
	// TCGCacheMiB caps QEMU's translation cache under TCG.
	TCGCacheMiB int
	Disks       []Disk
	Shares      []Share
	// FileServer is the virtio-fs server (virtiofsd) a share with
	// TransportVirtioFS needs: the backend starts one per such share,
	// confined like the VMM, before the VMM.
	FileServer string
	// Net, if set, gives the VM one network card wired to a user-mode
	// network listening on a unix socket.
	Net *Net
	// AgentSocket is the unix socket the VMM serves the agent channel on.
	AgentSocket string
	// ConsoleLog receives the guest's serial console; it is truncated at
	// start unless ConsoleAppend.
	ConsoleLog    string
	ConsoleAppend bool
	// PIDFile, when set, receives the VMM's pid.
	PIDFile string
	// Monitor, when set, is the unix socket of the VMM's control channel
	// (QMP for QEMU). A VM with a monitor starts with its CPUs stopped and
	// Start resumes them once the monitor is connected, so no event of the
	// guest is missed; Save needs it.
	Monitor string
	// RestoreFrom, when set, is a file written by Snapshotter.Save: the VM
	// resumes from it instead of booting its kernel. The devices (their
	// kinds, order, sizes, the memory size, the CPUs) must be those of the
	// saved VM; host paths (disk files, share folders, sockets) may differ.
	// Needs Monitor.
	RestoreFrom string
	// MemoryFile, when set, backs guest RAM with this file instead of
	// anonymous memory. With MemoryShared the guest writes into the file
	// (a VM to be saved: Save then leaves RAM out of the state, the file
	// holds it); without, the file is mapped copy-on-write (a VM resumed
	// from such a save: pages are read from the file on first touch, and
	// VMs resumed from one file share the pages none of them wrote).
	MemoryFile   string
	MemoryShared bool
	// Jail, when set, runs the VMM confined (see package jail): as UID and
	// GID, in a root of its own when NewRoot, always under a filter that
	// refuses set-id files. The backend makes the files the VM writes
	// (disks, console log, memory file, socket folders) the UID's.
	Jail *Jail
}

// Jail is how a VMM is confined.
type Jail struct {
	// NewRoot gives the VMM its own mount, PID, IPC and network
	// namespaces on an empty root (needs root).
	NewRoot bool
	// UID and GID the VMM runs as with NewRoot; never 0.
	UID, GID int
	// Backing lists the folders whose files a disk may name as its
	// backing file with NewRoot (sbx's template and snapshot caches): a
	// disk's header is the VMM user's to write, and root, preparing the
	// jail, must not follow it anywhere else (see disk.Chain). Empty, a
	// disk with a backing file is refused.
	Backing []string
}

// Nobody is the uid and gid a root-started VMM falls back to.
const Nobody = 65534

// DefaultJail is the jail of a VMM whose guest user is uid:gid on the
// host (the owner of what it writes into workspaces). Started by root,
// the VMM runs as that user (nobody for a uid of 0) in a root of its own;
// started by anyone else it already runs as them, and gets the filter.
func DefaultJail(uid, gid int) *Jail {
	if os.Geteuid() != 0 {
		return &Jail{UID: os.Getuid(), GID: os.Getgid()}
	}
	if uid <= 0 {
		uid = Nobody
	}
	if gid <= 0 {
		gid = Nobody
	}
	return &Jail{NewRoot: true, UID: uid, GID: gid}
}

// Exit is how a VMM process ended.
type Exit struct {
	Code   int    // exit code, or -1 when killed by a signal
	Signal string // signal name when killed by one
	Err    error  // error waiting for the process, if any
	At     time.Time
}

// Backend is one VMM implementation.
type Backend interface {
	// Name is the backend's short name ("qemu").
	Name() string
	// New prepares, without starting, a VM described by cfg.
	New(ctx context.Context, cfg Config, log *slog.Logger) (Instance, error)
}

// Instance is one VM. See the package comment for the call order.
type Instance interface {
	// Start launches the VMM and connects the agent channel. Output of the
	// VMM process itself (not the guest console) goes to stderr.
	Start(ctx context.Context, stderr io.Writer) error
	// AgentConn is the connected agent channel; valid after Start.
	AgentConn() net.Conn
	// PID is the VMM's process id; valid after Start.
	PID() int
	// Wait yields the exit of the VMM process.
	Wait() <-chan Exit
	// Kill ends the VMM at once. Idempotent.
	Kill() error
}

// Snapshotter is an Instance that can save its whole state (memory, CPU
// and device state; not disk contents) for a later Config.RestoreFrom.
// Instances made with a Monitor implement it.
type Snapshotter interface {
	// WaitAgentOpen returns once the guest has opened its end of the
	// agent channel (the guest agent is up and about to serve).
	WaitAgentOpen(ctx context.Context) error
	// Save stops the guest's CPUs and writes the VM's state to f; the VM
	// stays stopped (Kill it after). Disks must be kept as they are at
	// this moment by the caller: their contents are not in the state.
	Save(ctx context.Context, f *os.File) error
}
