// Package sandbox keeps the on-disk state of sandboxes: one folder per
// sandbox under the data folder, keyed by a random id, holding its
// configuration (config.json), its last known state (state.json), its root
// disk overlay and its logs. docs/state-layout.md names every file.
//
// The package does no VM work. Mutating operations on one sandbox are
// serialised by Lock; creating a sandbox (which must check that its name is
// free) is serialised by the store-wide lock.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sbx-dev/sbx/internal/safefile"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sbx-dev/sbx/internal/paths"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound      = errors.New("sandbox not found")
	ErrNameTaken     = errors.New("sandbox name taken")
	ErrInvalidName   = errors.New("invalid sandbox name")
	ErrBusy          = errors.New("sandbox busy")
	ErrNotRunning    = errors.New("sandbox not running")
	ErrStillRunning  = errors.New("sandbox still running")
	ErrConfigVersion = errors.New("unsupported config version")
)

// ConfigVersion is the version written into config.json.
const ConfigVersion = 1

// File names inside a sandbox folder.
const (
	ConfigFile     = "config.json"
	StateFile      = "state.json"
	DiskFile       = "disk.qcow2"
	DockerDiskFile = "docker.img"
	ConsoleLog     = "console.log"
	SupervisorLog  = "supervisor.log"
	SupervisorPID  = "supervisor.pid"
	LockFile       = "lock"
	BootFile       = "boot.json"
	ControlSocket  = "control.sock"
	// VMMDir, in the runtime folder, holds the sockets the VMM uses (its
	// agent channel, QMP, the network card's): the one runtime folder its
	// jail may write, so it never reaches the control socket.
	VMMDir      = "vmm"
	AgentSocket = "agent.sock"
	QMPSocket   = "qmp.sock"
	// BootedFile exists once the sandbox's disk has been booted: its first
	// start may resume a snapshot, later ones boot cold.
	BootedFile     = "booted"
	storeLockFile  = ".lock"
	sandboxesDir   = "sandboxes"
	idBytes        = 6
	maxNameLength  = 63
	minNameLength  = 2
	stateFileMode  = 0o600
	configFileMode = 0o600
)

// Workspace is one host folder shared into the VM at the same path.
type Workspace struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Mount, when set, is where the guest mounts it instead of Path (the
	// source repository of a clone mode sandbox made before bundles).
	Mount string `json:"mount,omitempty"`
	// Unshared records a folder that is not shared with the guest at all:
	// a clone mode sandbox's host repository, which the guest gets as a
	// bundle of commits (internal/clone).
	Unshared bool `json:"unshared,omitempty"`
}

// GuestPath is where the guest mounts w.
func (w Workspace) GuestPath() string {
	if w.Mount != "" {
		return w.Mount
	}
	return w.Path
}

// Clone is a clone mode sandbox's setup (internal/clone): its one
// workspace is the host repository, shared read-only at a Mount of its
// own, and the agent works in a clone at the repository's path on the
// VM's disk.
type Clone struct {
	// Untracked copies the untracked files git does not ignore.
	Untracked bool `json:"untracked,omitempty"`
	// Remotes are the host repository's forge remotes, added to the
	// clone.
	Remotes []Remote `json:"remotes,omitempty"`
}

// Remote is a git remote.
type Remote struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// TemplateRef names the root image a sandbox's disk is backed by.
type TemplateRef struct {
	Name  string `json:"name"`
	ID    string `json:"id"`
	Image string `json:"image"`
}

// Config is the creation-time configuration of a sandbox. It changes only
// through Store.Create.
type Config struct {
	Version    int         `json:"version"`
	ID         string      `json:"id"`
	Name       string      `json:"name"`
	Agent      string      `json:"agent"`
	Workspaces []Workspace `json:"workspaces"`
	CPUs       int         `json:"cpus"`
	MemoryMiB  int         `json:"memoryMiB"`
	DiskBytes  int64       `json:"diskBytes"`
	Accel      string      `json:"accel"`
	Template   TemplateRef `json:"template"`
	// UID and GID are the ids the guest user takes so workspace files
	// belong to the caller on the host.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// MAC is the guest network card's address, fixed at creation.
	MAC string `json:"mac"`
	// DockerDiskBytes is the size of the sparse per-sandbox disk that holds
	// /var/lib/docker; 0 when the template has no Docker Engine.
	DockerDiskBytes int64 `json:"dockerDiskBytes,omitempty"`
	// Git is the host user's git identity, set in the guest; nil when the
	// user opted out or the host has none.
	Git *GitIdentity `json:"git,omitempty"`
	// AgentDomains reports whether the agent's domains were added as
	// sandbox rules (origin "agent:NAME").
	AgentDomains bool `json:"agentDomains,omitempty"`
	// Protect are the user's host paths inside the workspaces the agent
	// may not change (read-only for the guest, enforced on the host). The
	// defaults (.git/hooks, .git/config) are resolved at each start when
	// ProtectDefaults is set, so a repository made later is covered.
	Protect         []string `json:"protect,omitempty"`
	ProtectDefaults bool     `json:"protectDefaults,omitempty"`
	// Clone, when set, makes this a clone mode sandbox (see Clone).
	Clone *Clone `json:"clone,omitempty"`
	// Snapshot is the key of the snapshot whose disk backs the sandbox's
	// disk (see package snapshot); its first start resumes that snapshot.
	// Empty for sandboxes created with --cold.
	Snapshot string `json:"snapshot,omitempty"`
	// MachineID is the guest's /etc/machine-id (32 random hex digits).
	MachineID string    `json:"machineID,omitempty"`
	Created   time.Time `json:"created"`
}

// GitIdentity is a git user.name and user.email.
type GitIdentity struct {
	Name  string `json:"name,omitempty"`
	Email string `json:"email,omitempty"`
}

// Status of a sandbox as shown by `sbx ls`.
type Status string

// Statuses.
const (
	StatusStopped  Status = "stopped"
	StatusStarting Status = "starting"
	StatusRunning  Status = "running"
	StatusStopping Status = "stopping"
	StatusCrashed  Status = "crashed"
)

// State is the last state a supervisor recorded. It is advisory: Store.Status
// checks that the recorded supervisor is still alive.
type State struct {
	Version  int       `json:"version"`
	Status   Status    `json:"status"`
	Reason   string    `json:"reason,omitempty"`
	PID      int       `json:"pid,omitempty"`
	Detached bool      `json:"detached,omitempty"`
	Changed  time.Time `json:"changed"`
	Started  time.Time `json:"started,omitzero"`
	// Share is how the running VM's workspaces are shared ("virtiofs"
	// or "9p"), ShareWhy why not virtio-fs.
	Share    string `json:"share,omitempty"`
	ShareWhy string `json:"shareWhy,omitempty"`
}

// Sandbox is a sandbox as found on disk.
type Sandbox struct {
	Config Config
	Dir    string
}

// Path returns the path of a file in the sandbox folder.
func (s *Sandbox) Path(name string) string { return filepath.Join(s.Dir, name) }

// PrimaryWorkspace is the first workspace, the default working folder.
func (s *Sandbox) PrimaryWorkspace() string {
	if len(s.Config.Workspaces) == 0 {
		return "/"
	}
	return s.Config.Workspaces[0].Path
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]*$`)

// ValidateName checks a sandbox name: 2 to 63 letters, digits, '-' and '.',
// starting with a letter or digit.
func ValidateName(name string) error {
	switch {
	case len(name) < minNameLength || len(name) > maxNameLength:
		return fmt.Errorf("%w %q: use 2 to 63 characters", ErrInvalidName, name)
	case !nameRE.MatchString(name):
		return fmt.Errorf("%w %q: use letters, digits, '-' and '.', starting with a letter or digit", ErrInvalidName, name)
	}
	return nil
}

// CleanName turns s into something ValidateName accepts where it can: other
// characters become '-', runs of '-' collapse, leading junk goes, and the
// result is cut to 63 characters. It may return a name that is still too
// short; callers validate.
func CleanName(s string) string {
	var b strings.Builder
	lastDash := false
	for _, r := range s {
		ok := r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.')
		if ok {
			b.WriteRune(r)
			lastDash = false
			continue
		}
		if !lastDash {
			b.WriteByte('-')
			lastDash = true
		}
	}
	out := strings.TrimLeft(b.String(), "-.")
	out = strings.TrimRight(out, "-")
	if len(out) > maxNameLength {
		out = strings.TrimRight(out[:maxNameLength], "-.")
	}
	return out
}

// Store is the collection of sandboxes under one data folder.
type Store struct {
	dirs paths.Dirs
}

// NewStore returns the store for dirs. It creates nothing until used.
func NewStore(dirs paths.Dirs) *Store { return &Store{dirs: dirs} }

// Dirs returns the folders the store was made with.
func (s *Store) Dirs() paths.Dirs { return s.dirs }

func (s *Store) root() string { return filepath.Join(s.dirs.Data, sandboxesDir) }

// DirOf is the folder sandbox id has once committed.
func (s *Store) DirOf(id string) string { return filepath.Join(s.root(), id) }

// LockStore takes the store-wide lock, used while choosing a name and
// creating a sandbox. The returned func releases it.
func (s *Store) LockStore() (func(), error) {
	if err := os.MkdirAll(s.root(), 0o700); err != nil {
		return nil, fmt.Errorf("create state folder: %w", err)
	}
	return safefile.Lock(context.Background(), filepath.Join(s.root(), storeLockFile))
}

// Lock takes the exclusive lock of one sandbox, waiting for other sbx
// commands that hold it. The returned func releases it.
func (s *Store) Lock(sb *Sandbox) (func(), error) {
	return s.LockContext(context.Background(), sb)
}

// LockContext is Lock that gives up, with ctx's error, when ctx ends.
func (s *Store) LockContext(ctx context.Context, sb *Sandbox) (func(), error) {
	return safefile.Lock(ctx, sb.Path(LockFile))
}

// TryLock is Lock without waiting: it returns ErrBusy when another command
// holds the lock.
func (s *Store) TryLock(sb *Sandbox) (func(), error) {
	unlock, err := safefile.TryLock(sb.Path(LockFile))
	if errors.Is(err, safefile.ErrBusy) {
		return nil, ErrBusy
	}
	return unlock, err
}

// NewMAC returns a random locally administered unicast MAC address.
func NewMAC() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	b[0] = b[0]&0xfe | 0x02
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
}

// NewMachineID returns a fresh random machine id (32 hex digits).
func NewMachineID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewID returns a fresh random sandbox id (12 hex digits).
func NewID() string {
	b := make([]byte, idBytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Create writes a new sandbox folder with cfg. The caller holds LockStore
// and has checked the name. cfg.ID must be set.
func (s *Store) Create(cfg Config) (*Sandbox, error) {
	if err := ValidateName(cfg.Name); err != nil {
		return nil, err
	}
	if _, err := s.Get(cfg.Name); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrNameTaken, cfg.Name)
	}
	cfg.Version = ConfigVersion
	dir := filepath.Join(s.root(), ".new-"+cfg.ID)
	if err := os.MkdirAll(s.root(), 0o700); err != nil {
		return nil, fmt.Errorf("create state folder: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create sandbox folder: %w", err)
	}
	sb := &Sandbox{Config: cfg, Dir: dir}
	if err := writeJSON(sb.Path(ConfigFile), cfg, configFileMode); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.SetState(sb, State{Status: StatusStopped}); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return sb, nil
}

// Commit makes a sandbox from Create visible under its id, once everything
// it needs (its disk) is in place; until then it does not list. On error
// the caller discards it with Discard.
func (s *Store) Commit(sb *Sandbox) error {
	dir := filepath.Join(s.root(), sb.Config.ID)
	if err := os.Rename(sb.Dir, dir); err != nil {
		return fmt.Errorf("create sandbox folder: %w", err)
	}
	sb.Dir = dir
	return nil
}

// Discard deletes a sandbox that Create made and Commit did not publish.
func (s *Store) Discard(sb *Sandbox) {
	os.RemoveAll(sb.Dir)
}

// CleanStale deletes folders left by a create or remove that was killed
// half-way. The caller holds LockStore; folders younger than a minute are
// left alone, as another command may be working on them.
func (s *Store) CleanStale() {
	entries, _ := os.ReadDir(s.root())
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() || !(strings.HasPrefix(n, ".new-") || strings.HasPrefix(n, ".rm-")) {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
			os.RemoveAll(filepath.Join(s.root(), n))
		}
	}
}

// List returns every sandbox, sorted by name. Folders that cannot be read
// are skipped and reported in the joined error alongside the result.
func (s *Store) List() ([]*Sandbox, error) {
	entries, err := os.ReadDir(s.root())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state folder: %w", err)
	}
	var out []*Sandbox
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue // .new-<id> being created, .rm-<id> being removed
		}
		sb, err := s.load(e.Name())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, sb)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Config.Name < out[j].Config.Name })
	return out, errors.Join(errs...)
}

func (s *Store) load(id string) (*Sandbox, error) {
	dir := filepath.Join(s.root(), id)
	data, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("read sandbox %s: %w", id, err)
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, ConfigFile), err)
	}
	if cfg.Version != ConfigVersion {
		return nil, fmt.Errorf("%s: %w %d (this sbx reads %d)", filepath.Join(dir, ConfigFile), ErrConfigVersion, cfg.Version, ConfigVersion)
	}
	// Paths are made of the id (its runtime folder, its leases): one
	// that is not its folder's name ("../x") is a damaged config.
	if cfg.ID != id {
		return nil, fmt.Errorf("%s: its id %q is not its folder's name", filepath.Join(dir, ConfigFile), cfg.ID)
	}
	return &Sandbox{Config: cfg, Dir: dir}, nil
}

// Damaged is a sandbox folder whose config cannot be read.
type Damaged struct {
	ID, Dir string
	Err     error
}

// Damaged lists the sandbox folders whose config cannot be read (torn,
// empty, of another version). Each can still be removed: Placeholder.
func (s *Store) Damaged() []Damaged {
	entries, _ := os.ReadDir(s.root())
	var out []Damaged
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if _, err := s.load(e.Name()); err != nil {
			out = append(out, Damaged{ID: e.Name(), Dir: filepath.Join(s.root(), e.Name()), Err: err})
		}
	}
	return out
}

// Placeholder is a Sandbox for damaged folder d, to remove it: its name
// and id are the folder's name, the rest of its config unknown.
func (d Damaged) Placeholder() *Sandbox {
	return &Sandbox{Config: Config{Version: ConfigVersion, ID: d.ID, Name: d.ID}, Dir: d.Dir}
}

// Get finds a sandbox by name, or by id.
func (s *Store) Get(nameOrID string) (*Sandbox, error) {
	all, listErr := s.List()
	for _, sb := range all {
		if sb.Config.Name == nameOrID {
			return sb, nil
		}
	}
	for _, sb := range all {
		if sb.Config.ID == nameOrID {
			return sb, nil
		}
	}
	if listErr != nil {
		// A sandbox folder that cannot be read may be the one asked for.
		return nil, fmt.Errorf("%w: %s (some sandboxes could not be read: %w)", ErrNotFound, nameOrID, listErr)
	}
	return nil, fmt.Errorf("%w: %s", ErrNotFound, nameOrID)
}

// Remove deletes the sandbox folder and its runtime folder. The caller holds
// the sandbox lock and has stopped it. Workspaces are never touched: they
// are outside the folder.
func (s *Store) Remove(sb *Sandbox) error {
	if err := os.RemoveAll(s.dirs.RuntimeDir(sb.Config.ID)); err != nil {
		return fmt.Errorf("remove runtime folder: %w", err)
	}
	// Rename first so a half-removed folder never looks like a sandbox.
	trash := filepath.Join(s.root(), ".rm-"+sb.Config.ID)
	if err := os.Rename(sb.Dir, trash); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", sb.Config.Name, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", sb.Config.Name, err)
	}
	return nil
}

// ReadState reads state.json. A missing file reads as stopped.
func (s *Store) ReadState(sb *Sandbox) (State, error) {
	var st State
	data, err := os.ReadFile(sb.Path(StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return State{Status: StatusStopped}, nil
	}
	if err != nil {
		return st, fmt.Errorf("read state of %s: %w", sb.Config.Name, err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("parse state of %s: %w", sb.Config.Name, err)
	}
	return st, nil
}

// SetState writes state.json atomically.
func (s *Store) SetState(sb *Sandbox, st State) error {
	st.Version = 1
	if st.Changed.IsZero() {
		st.Changed = time.Now().UTC()
	}
	return writeJSON(sb.Path(StateFile), st, stateFileMode)
}

// Status returns the effective state: a recorded running, starting or
// stopping state whose supervisor process is gone is reported as crashed.
func (s *Store) Status(sb *Sandbox) (State, error) {
	st, err := s.ReadState(sb)
	if err != nil {
		return st, err
	}
	switch st.Status {
	case StatusRunning, StatusStarting, StatusStopping:
		if !SupervisorAlive(st.PID, sb.Config.ID) {
			st.Status = StatusCrashed
			if st.Reason == "" {
				st.Reason = "the supervisor process exited unexpectedly"
			}
		}
	}
	return st, nil
}

// inProcess are the sandboxes whose supervisor runs in this process
// (RunsInProcess): tests of the lifecycle, which run supervisors with a
// fake VM in the test binary.
var inProcess sync.Map // id -> struct{}

// RunsInProcess records that sandbox id's supervisor runs in this
// process, so SupervisorAlive knows it while it lasts; call the returned
// func when it has stopped.
func RunsInProcess(id string) func() {
	inProcess.Store(id, struct{}{})
	return func() { inProcess.Delete(id) }
}

// SupervisorAlive reports whether pid is a live `sbx supervise id` process
// (or this process, running id's supervisor: RunsInProcess).
func SupervisorAlive(pid int, id string) bool {
	if pid <= 0 {
		return false
	}
	if pid == os.Getpid() {
		_, ok := inProcess.Load(id)
		return ok
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	hasSupervise, hasID := false, false
	for _, a := range args {
		switch a {
		case "supervise":
			hasSupervise = true
		case id:
			hasID = true
		}
	}
	return hasSupervise && hasID
}

func writeJSON(path string, v any, mode os.FileMode) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	data = append(data, '\n')
	return WriteFileAtomic(path, data, mode)
}

// WriteFileAtomic writes data so readers see the old or the new content,
// never a mix (safefile.Write).
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return safefile.Write(path, data, mode)
}
