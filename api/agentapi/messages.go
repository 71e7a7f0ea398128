package agentapi

import (
	"errors"
	"fmt"
	"time"
)

// Op names an operation.
type Op string

// Operations. Each has exactly one matching pointer field in [Request].
const (
	OpHello    Op = "hello"
	OpSetup    Op = "setup"
	OpExec     Op = "exec"
	OpCopyIn   Op = "copy-in"
	OpCopyOut  Op = "copy-out"
	OpShutdown Op = "shutdown"
	OpHealth   Op = "health"
)

// ErrorCode is the machine-readable class of a failure in a [Response] or
// an [ErrorInfo]. Callers branch on it; the message is for humans.
type ErrorCode string

// Error codes.
const (
	// CodeNotFound: a path, user or executable does not exist (exec: exit 127).
	CodeNotFound ErrorCode = "not-found"
	// CodePermission: permission denied (exec: exit 126).
	CodePermission ErrorCode = "permission"
	// CodeInvalid: the request is malformed or names something unusable.
	CodeInvalid ErrorCode = "invalid"
	// CodeVersion: the peer speaks another ProtocolVersion.
	CodeVersion ErrorCode = "version-mismatch"
	// CodeUnsupported: the guest cannot perform this operation.
	CodeUnsupported ErrorCode = "unsupported"
	// CodeInternal: anything else that failed in the guest.
	CodeInternal ErrorCode = "internal"
)

// Request is the first frame of every stream. Op selects the operation and
// exactly the matching pointer field must be set.
type Request struct {
	Op       Op               `json:"op"`
	Hello    *HelloRequest    `json:"hello,omitempty"`
	Setup    *SetupRequest    `json:"setup,omitempty"`
	Exec     *ExecRequest     `json:"exec,omitempty"`
	CopyIn   *CopyInRequest   `json:"copy_in,omitempty"`
	CopyOut  *CopyOutRequest  `json:"copy_out,omitempty"`
	Shutdown *ShutdownRequest `json:"shutdown,omitempty"`
	Health   *HealthRequest   `json:"health,omitempty"`
}

// Validate reports whether r names a known op, carries the matching field,
// and carries no other op's field. It checks the shape only; each op
// validates its own arguments.
func (r Request) Validate() error {
	set := map[Op]bool{
		OpHello:    r.Hello != nil,
		OpSetup:    r.Setup != nil,
		OpExec:     r.Exec != nil,
		OpCopyIn:   r.CopyIn != nil,
		OpCopyOut:  r.CopyOut != nil,
		OpShutdown: r.Shutdown != nil,
		OpHealth:   r.Health != nil,
	}
	has, known := set[r.Op]
	if !known {
		return fmt.Errorf("invalid request: unknown op %q", r.Op)
	}
	if !has {
		return fmt.Errorf("invalid request: op %q without its %q field", r.Op, r.Op)
	}
	for op, ok := range set {
		if ok && op != r.Op {
			return fmt.Errorf("invalid request: op %q carries a %q field", r.Op, op)
		}
	}
	return nil
}

// Response answers a Request. OK=false carries Error (human text) and Code;
// otherwise the field matching the request's op, if the op has results.
type Response struct {
	OK    bool      `json:"ok"`
	Error string    `json:"error,omitempty"`
	Code  ErrorCode `json:"code,omitempty"`
	// Field names the request field a failed exec is about ("user",
	// "dir", "argv"), when the guest knows.
	Field  string          `json:"field,omitempty"`
	Hello  *HelloResponse  `json:"hello,omitempty"`
	Exec   *ExecResponse   `json:"exec,omitempty"`
	Health *HealthResponse `json:"health,omitempty"`
}

// Err returns nil for an OK response and an *[ErrorInfo] otherwise.
func (r Response) Err() error {
	if r.OK {
		return nil
	}
	return &ErrorInfo{Code: r.Code, Message: r.Error}
}

// ErrorInfo is a failure reported by the guest: the payload of a FrameError
// frame, and the error form of a failed Response.
type ErrorInfo struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
}

// Error returns the guest's message.
func (e *ErrorInfo) Error() string {
	if e.Message == "" {
		return "guest agent: " + string(e.Code)
	}
	return "guest agent: " + e.Message
}

// Is makes errors.Is(err, &ErrorInfo{Code: c}) match any ErrorInfo with code c.
func (e *ErrorInfo) Is(target error) bool {
	var t *ErrorInfo
	if !errors.As(target, &t) {
		return false
	}
	return t.Message == "" && t.Code == e.Code
}

// HelloRequest opens a session: the host states its protocol version.
// Sequence: Request -> Response{Hello}. A guest with another version
// answers OK=false, Code=CodeVersion and still fills Hello.
type HelloRequest struct {
	ProtocolVersion int `json:"protocol_version"`
}

// HelloResponse describes the guest.
type HelloResponse struct {
	ProtocolVersion int    `json:"protocol_version"`
	KernelRelease   string `json:"kernel_release"`
	BootID          string `json:"boot_id"`
	// BootPhases are the guest's boot steps of this boot, in order: first
	// "kernel" (the kernel's own boot until the agent ran as /init, read
	// from CLOCK_BOOTTIME), then the agent's phases ("early-mounts",
	// "modules", "root-disk", ...). Empty from older agents.
	BootPhases []BootPhase `json:"boot_phases,omitempty"`
}

// BootPhase is one named guest boot step and how long it took.
type BootPhase struct {
	Name       string `json:"name"`
	DurationUS int64  `json:"duration_us"`
}

// SetupRequest prepares the guest for a sandbox. Sequence: Request ->
// Response. It is idempotent: repeating it with the same values changes
// nothing and mounts no workspace twice.
type SetupRequest struct {
	// Hostname, if set, becomes the guest's hostname.
	Hostname string `json:"hostname,omitempty"`
	// User is the unprivileged account the agent runs as, normally "agent".
	User string `json:"user,omitempty"`
	// UID and GID, if User is set, become that user's uid and primary gid
	// (usually the host user's, so shared files keep their owner).
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Workspaces are 9p shares to mount, in order.
	Workspaces []Workspace `json:"workspaces,omitempty"`
	// Network, if set, configures the guest's network card and the
	// environment every process gets (proxy settings, CA paths).
	Network *NetworkSetup `json:"network,omitempty"`
	// Git, if set, is the git identity written system-wide (/etc/gitconfig),
	// so the user's own ~/.gitconfig still wins.
	Git *GitIdentity `json:"git,omitempty"`
	// Docker, if set, starts Docker Engine in a guest that has it, with its
	// data on a disk of its own. The setup does not wait for dockerd.
	Docker *DockerSetup `json:"docker,omitempty"`
	// Identity renews what must differ between sandboxes and be current
	// even when the guest resumed from a saved state shared with others:
	// applied first.
	Identity *Identity `json:"identity,omitempty"`
}

// Identity is the per-sandbox, per-start identity of a guest. A guest
// restored from a snapshot resumes with the snapshot's clock, random pool,
// machine id and network card address; the setup replaces all four before
// the sandbox is used.
type Identity struct {
	// MachineID (32 lowercase hex digits) is written to /etc/machine-id.
	MachineID string `json:"machine_id,omitempty"`
	// TimeUnixNano is the host's clock when the request was made; the
	// guest sets its wall clock from it.
	TimeUnixNano int64 `json:"time_unix_nano,omitempty"`
	// Seed is random bytes from the host, mixed into the guest kernel's
	// random pool, which is then reseeded (RNDADDENTROPY, RNDRESEEDCRNG).
	Seed []byte `json:"seed,omitempty"`
}

// GitIdentity is a git user.name and user.email. Empty fields are left
// out; values may not contain newlines.
type GitIdentity struct {
	Name  string `json:"name,omitempty"`
	Email string `json:"email,omitempty"`
}

// DockerSetup asks the guest to run Docker Engine: load the kernel modules
// it needs, mount its disk at /var/lib/docker and start dockerd (when the
// guest has /usr/sbin/dockerd) with the network setup's proxy environment.
// dockerd runs in the background under the agent's supervision; the setup
// answers before it is up.
type DockerSetup struct {
	// DiskSerial is the serial of the virtio-blk disk that holds
	// /var/lib/docker (/sys/block/vdX/serial); the host formats it as ext4.
	DiskSerial string `json:"disk_serial"`
}

// NetworkSetup is the guest side of the sandbox network: a static address
// on the user-mode network, its resolver, the proxy environment and the
// proxy's CA. Applying it again replaces the previous values.
type NetworkSetup struct {
	// MAC is the address of the interface to configure; empty means the
	// first non-loopback interface. When no interface has it and the guest
	// has one network card (a guest restored from a snapshot has the
	// snapshot's address), that card is given this address.
	MAC string `json:"mac,omitempty"`
	// Address is the guest's address with its prefix ("192.168.127.2/24").
	Address string `json:"address"`
	// Gateway is the default route ("192.168.127.1").
	Gateway string `json:"gateway"`
	// DNS lists the resolvers written to /etc/resolv.conf.
	DNS []string `json:"dns,omitempty"`
	// MTU of the interface; 0 keeps the default.
	MTU int `json:"mtu,omitempty"`
	// Env entries (KEY=VALUE) every process in the guest gets, between the
	// login environment and the request's own: HTTP_PROXY and friends.
	// They are also written for login shells and kept across sudo.
	Env []string `json:"env,omitempty"`
	// CACertPEM is a CA certificate the guest trusts system-wide.
	CACertPEM string `json:"ca_cert_pem,omitempty"`
}

// Workspace is one host directory shared over 9p.
type Workspace struct {
	// Tag is the mount tag the VMM gave the share.
	Tag string `json:"tag"`
	// Path is the absolute guest path to mount it at (created if missing).
	Path string `json:"path"`
	// ReadOnly mounts the share read-only.
	ReadOnly bool `json:"read_only,omitempty"`
	// FS is the share's file system: "9p" (when empty) or "virtiofs".
	FS string `json:"fs,omitempty"`
}

// ExecRequest starts a process. Sequence: Request -> Response (OK once the
// process started, or OK=false with CodeNotFound / CodePermission /
// CodeInvalid). After OK: host->guest Stdin*, StdinClose, Resize, Signal in
// any order; guest->host Stdout*, Stderr*, then exactly one Exit, after all
// output. The host keeps the stream open until Exit; if the stream breaks
// first, the guest sends SIGHUP, then SIGKILL, to the process.
type ExecRequest struct {
	// Argv is the command; Argv[0] is looked up in the process's PATH.
	Argv []string `json:"argv"`
	// Env entries (KEY=VALUE) are added on top of the login environment
	// (HOME, USER, LOGNAME, SHELL, PATH, and TERM with a TTY).
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; empty means the user's home.
	Dir string `json:"dir,omitempty"`
	// User is a user name or numeric uid; empty means the guest's default
	// user ("agent").
	User string `json:"user,omitempty"`
	// TTY runs the process on a new pseudo-terminal as its controlling
	// terminal; output then arrives as Stdout only.
	TTY bool `json:"tty,omitempty"`
	// Rows and Cols are the initial terminal size (TTY only; 0 = 24x80).
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Term is the TERM value with a TTY; empty means "xterm".
	Term string `json:"term,omitempty"`
}

// ExecResponse reports the started process.
type ExecResponse struct {
	PID int `json:"pid"`
}

// ExitStatus is how a process ended: the payload of the Exit frame.
type ExitStatus struct {
	// Code is the exit code, or 128+N when killed by signal N.
	Code int `json:"code"`
	// Signal names the signal that killed the process ("SIGKILL"), if any.
	Signal string `json:"signal,omitempty"`
}

// CopyInRequest writes a tar stream into the guest, docker cp style.
// Sequence: Request, Data*, DataEnd (host->guest), then Response. If Path
// is an existing directory, the archive's entries are created inside it;
// otherwise the archive must hold a single top-level entry, created as Path
// (whose parent must exist). The guest reads up to DataEnd even after a
// failure, so the host can write the whole stream before reading.
type CopyInRequest struct {
	Path string `json:"path"`
}

// CopyOutRequest reads a path out of the guest as a tar stream. Sequence:
// Request -> Response; after OK, Data* then DataEnd, or an Error frame
// (which ends the stream). The archive has one top-level entry named after
// the base of Path; symlinks are archived as symlinks, never followed.
type CopyOutRequest struct {
	Path string `json:"path"`
}

// ShutdownRequest powers the guest off. Sequence: Request -> Response; the
// guest then syncs, unmounts (best effort) and powers off, ending the
// session.
type ShutdownRequest struct{}

// HealthRequest asks whether the guest agent serves. Sequence: Request ->
// Response{Health}.
type HealthRequest struct{}

// HealthResponse reports the guest's state.
type HealthResponse struct {
	// Uptime is the guest kernel's uptime.
	Uptime time.Duration `json:"uptime_ns"`
}
