package lifecycle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/internal/agents"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/template"
)

// The sizes of a NewRequest that gives none.
const (
	DefaultMemory     = "2g"
	DefaultDisk       = "20g"
	DefaultDockerDisk = "10g"
)

// NewRequest is a new sandbox as a person or a program asks for it, in
// plain values; New checks every one, fills in the defaults and creates
// it. The CLI's flags, the REST API's body and E2B's create all become
// one.
type NewRequest struct {
	// Name is the sandbox's; "" is the agent and the folder name.
	Name string
	// Agent is the agent it runs; "" is the shell.
	Agent string
	// Workspaces are host folders (absolute, resolved, existing); the
	// first is the primary one, only later ones may be read-only.
	Workspaces []sandbox.Workspace
	// Template is a template name, image file or image reference; "" is
	// the agent's.
	Template string
	// Memory, Disk and DockerDisk are sizes ("2g", "4096m"); "" is the
	// default.
	Memory, Disk, DockerDisk string
	// CPUs is 1 to 64; 0 is the default (1 under TCG, 2 with KVM).
	CPUs int
	// Accel is auto (""), kvm or tcg.
	Accel string
	// Protect are workspace paths kept read-only for the agent (relative
	// ones from the primary workspace); ProtectDefaults adds .git/hooks
	// and .git/config. Both need root.
	Protect         []string
	ProtectDefaults bool
	// Clone makes it a clone mode sandbox of the one workspace, a git
	// repository; CloneUntracked also copies its untracked files.
	Clone, CloneUntracked bool
	// Cold makes it without its template's snapshot.
	Cold bool
	// NoGitIdentity leaves the host's git user.name and user.email out.
	NoGitIdentity bool
	// AllowAgentDomains adds the agent's domains as rules even under
	// deny-all.
	AllowAgentDomains bool
	// Deny are network resources denied to this sandbox.
	Deny []policy.Resource
	// Ports are published from its first start.
	Ports []sandbox.Port
}

// Problem is one refused field of a NewRequest: Field is its name (the
// CLI's flag without "--"), Msg what is wrong, starting with the value.
type Problem struct {
	Field string
	Msg   string
}

// Problems are every refused field of a request at once, as an Invalid
// Error's cause (errors.As).
type Problems []Problem

func (p Problems) Error() string {
	var s []string
	for _, x := range p {
		s = append(s, x.Field+" "+x.Msg)
	}
	return strings.Join(s, "; ")
}

// checkSizes reads the request's sizes and limits, every problem at once.
func checkSizes(req NewRequest) (mem, dsk, dockerDisk int64, probs Problems) {
	add := func(field, format string, args ...any) {
		probs = append(probs, Problem{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	memory := cmpOr(req.Memory, DefaultMemory)
	mem, err := sandbox.ParseSize(memory, "m")
	if err != nil {
		add("memory", "%s: %v", memory, err)
	} else if mem < 256<<20 {
		add("memory", "%s: at least 256m", memory)
	} else if total := hostMemory(); total > 0 && mem > total {
		// QEMU cannot reserve more than the machine has: it would fail
		// at start with a reason only its log shows.
		add("memory", "%s: more than this machine's memory and swap (%dm)", memory, total>>20)
	}
	d := cmpOr(req.Disk, DefaultDisk)
	if dsk, err = sandbox.ParseSize(d, "g"); err != nil {
		add("disk", "%s: %v", d, err)
	}
	dd := cmpOr(req.DockerDisk, DefaultDockerDisk)
	if dockerDisk, err = sandbox.ParseSize(dd, "g"); err != nil {
		add("docker-disk", "%s: %v", dd, err)
	} else if dockerDisk < 1<<30 {
		add("docker-disk", "%s: at least 1g", dd)
	}
	if req.CPUs < 0 || req.CPUs > 64 {
		add("cpus", "%d: use 1 to 64", req.CPUs)
	}
	switch req.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		add("accel", "%q: use auto, kvm or tcg", req.Accel)
	}
	return mem, dsk, dockerDisk, probs
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Config checks req (every problem at once, before any slow work) and
// returns the configuration of a new sandbox called name. A clone mode
// request checks its repository here.
func (m *Manager) Config(ctx context.Context, req NewRequest, name string) (sandbox.Config, error) {
	if _, ok := agents.Find(cmpOr(req.Agent, "shell")); !ok {
		e := invalid(nil, "known agents: "+agents.Names(), "no agent named %q", req.Agent)
		e.Field = "agent"
		return sandbox.Config{}, e
	}
	if len(req.Workspaces) == 0 {
		e := invalid(nil, "give the folder to work in", "a sandbox needs a workspace")
		e.Field = "workspace"
		return sandbox.Config{}, e
	}
	if err := m.CheckWorkspaces(req.Workspaces); err != nil {
		return sandbox.Config{}, err
	}
	mem, dsk, dockerDisk, probs := checkSizes(req)
	ws := req.Workspaces
	var cl *sandbox.Clone
	if req.CloneUntracked && !req.Clone {
		probs = append(probs, Problem{Field: "clone-untracked", Msg: "needs clone mode (--clone)"})
	}
	if req.Clone {
		if len(ws) != 1 || ws[0].ReadOnly {
			e := invalid(nil, "give one repository folder", "clone mode takes exactly one writable workspace, the repository (got %s)", DescribeWorkspaces(ws))
			e.Field = "workspace"
			return sandbox.Config{}, e
		}
		if len(req.Protect) > 0 || req.ProtectDefaults {
			e := invalid(nil, "leave --protect out: in clone mode the host repository is read-only to the sandbox", "clone mode with protected paths")
			e.Field = "protect"
			return sandbox.Config{}, e
		}
		w, c, err := m.CloneWorkspace(ctx, ws[0].Path, req.CloneUntracked)
		if err != nil {
			return sandbox.Config{}, err
		}
		ws, cl = []sandbox.Workspace{w}, c
	}
	protect, pprobs := ResolveProtect(req.Protect, ws)
	probs = append(probs, pprobs...)
	if (len(protect) > 0 || req.ProtectDefaults) && os.Geteuid() != 0 {
		probs = append(probs, Problem{Field: "protect", Msg: fmt.Sprintf("and --protect-defaults: %v; run sbx as root (sudo), or leave them out", supervisor.ErrProtectNeedsRoot)})
	}
	if len(probs) > 0 {
		e := invalid(probs, "", "%s", probs.Error())
		e.Field = probs[0].Field
		return sandbox.Config{}, e
	}
	uid, gid := GuestIDsFor(ws[0].Path)
	cfg := sandbox.Config{
		ID:         sandbox.NewID(),
		MachineID:  sandbox.NewMachineID(),
		Name:       name,
		Agent:      cmpOr(req.Agent, "shell"),
		Workspaces: ws,
		CPUs:       req.CPUs,
		MemoryMiB:  int(mem >> 20),
		DiskBytes:  dsk,
		Accel:      cmpOr(req.Accel, "auto"),
		UID:        uid,
		GID:        gid,
		MAC:        sandbox.NewMAC(),
		Created:    time.Now().UTC(),

		DockerDiskBytes: dockerDisk,
		Protect:         protect,
		ProtectDefaults: req.ProtectDefaults,
		Clone:           cl,
	}
	// What would fail every start (a hard-linked protected file, a default
	// path that is a symlink, ...) is refused now.
	if _, err := supervisor.PlanNotes(cfg); err != nil {
		e := invalid(nil, "see \"Protected paths\" in docs/workspace-trust.md", "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
		e.Field = "protect"
		return sandbox.Config{}, e
	}
	if err := CheckVMMReach(ctx, cfg); err != nil {
		if e, ok := errors.AsType[*Error](err); ok {
			e.Field = "workspace"
		}
		return sandbox.Config{}, err
	}
	return cfg, nil
}

// New checks req, resolves its template (built or pulled on first use:
// minutes, outside any lock), and creates the sandbox with its rules and
// ports (Create). Warnings (a template built for other agents, agent
// domains left out under deny-all, protected paths through symlinks) come
// out as events.
func (m *Manager) New(ctx context.Context, req NewRequest) (*sandbox.Sandbox, error) {
	if req.Name != "" {
		if err := sandbox.ValidateName(req.Name); err != nil {
			e := invalid(nil, "use 2 to 63 letters, digits, '-' and '.', starting with a letter or digit", "invalid sandbox name %q", req.Name)
			e.Field = "name"
			return nil, e
		}
	}
	// Every field before any slow work.
	if _, err := m.Config(ctx, req, "x"); err != nil {
		return nil, err
	}
	agent, _ := agents.Find(cmpOr(req.Agent, "shell"))
	tmpl, err := m.ResolveTemplate(ctx, req.Template, agent.Template)
	if err != nil {
		return nil, err
	}
	if w := TemplateAgentWarning(tmpl, agent); w != "" {
		m.emit(Event{Kind: Warning, Text: w})
	}
	name := req.Name
	if name == "" {
		if name, err = m.DefaultName(agent.Name, req.Workspaces[0].Path); err != nil {
			return nil, err
		}
	}
	cfg, err := m.Config(ctx, req, name)
	if err != nil {
		return nil, err
	}
	if !req.NoGitIdentity {
		cfg.Git = HostGitIdentity(ctx)
	}
	cfg.AgentDomains = m.wantAgentDomains(agent, req.AllowAgentDomains)
	creq := CreateRequest{Config: cfg, Template: tmpl, Cold: req.Cold, Ports: req.Ports}
	// The agent's rules and the denied resources go in with the sandbox:
	// it never exists without them.
	if cfg.AgentDomains {
		if creq.Rules, err = AgentRules(agent); err != nil {
			return nil, err
		}
	}
	for _, r := range req.Deny {
		creq.Rules = append(creq.Rules, Rule{Action: policy.Deny, Resource: r, Origin: policy.OriginUser})
	}
	sb, err := m.Create(ctx, creq)
	if err != nil {
		return nil, err
	}
	m.warnNew(req, sb)
	return sb, nil
}

// warnNew says what of a new sandbox works otherwise than asked: a
// primary workspace the guest user cannot write (root ran sbx on a
// root-owned folder: the guest user has uid 1000), default protected
// paths that do not exist, protected paths reached through a symlink in a
// workspace (supervisor.PlanNotes).
func (m *Manager) warnNew(req NewRequest, sb *sandbox.Sandbox) {
	name := sb.Config.Name
	if ws := sb.PrimaryWorkspace(); sb.Config.Clone == nil {
		if st, err := os.Stat(ws); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				uid, gid := sb.Config.UID, sb.Config.GID
				mode := st.Mode().Perm()
				if !((int(sys.Uid) == uid && mode&0o200 != 0) || (int(sys.Gid) == gid && mode&0o020 != 0) || mode&0o002 != 0) {
					m.emit(Event{Kind: Warning, Sandbox: name, Text: fmt.Sprintf("%s belongs to uid %d; the sandbox (uid %d) cannot write there, not even with sudo in the guest. Run sbx as the folder's owner, or set SUDO_UID/SUDO_GID.", ws, sys.Uid, uid)})
				}
			}
		}
	}
	// Root without a sudo caller runs the VM as the workspace's owner
	// (GuestIDsFor): that account can trace it.
	if os.Geteuid() == 0 && os.Getenv("SUDO_UID") == "" && sb.Config.UID > 0 {
		if u, err := user.LookupId(strconv.Itoa(sb.Config.UID)); err == nil {
			m.emit(Event{Kind: Warning, Sandbox: name, Text: fmt.Sprintf("the sandbox's VM runs as %s (uid %d), the owner of %s, who can therefore control it (its network access and the credentials sbx adds for it); to keep a sandbox to root alone, run it on a folder root owns", u.Username, sb.Config.UID, sb.PrimaryWorkspace())})
		}
	}
	for _, v := range req.Protect {
		if r, viaLink, err := supervisor.ResolveProtect(v, sb.Config.Workspaces); err == nil && viaLink {
			m.emit(Event{Kind: Warning, Sandbox: name, Text: fmt.Sprintf("--protect %s: protecting %s, where a symlink in the workspace leads; the agent can change the link itself", v, r)})
		}
	}
	notes, _ := supervisor.PlanNotes(sb.Config)
	for _, n := range notes {
		m.emit(Event{Kind: Warning, Sandbox: name, Text: "protected paths: " + n})
	}
}

// ResolveProtect resolves protected path values (relative ones from the
// primary workspace, symlinks resolved on the host) to absolute paths
// inside the workspaces, without duplicates; each refused value is a
// Problem of field "protect".
func ResolveProtect(vals []string, ws []sandbox.Workspace) ([]string, Problems) {
	var out []string
	var probs Problems
	for _, v := range vals {
		r, _, err := supervisor.ResolveProtect(v, ws)
		switch {
		case errors.Is(err, supervisor.ErrProtectMissing):
			probs = append(probs, Problem{"protect", fmt.Sprintf("%s: %v; create it first (sbx does not create files in the workspace), or leave it out", v, err)})
		case errors.Is(err, supervisor.ErrProtectOutside):
			probs = append(probs, Problem{"protect", fmt.Sprintf("%s: %v (%s); the agent cannot reach it anyway", v, err, DescribeWorkspaces(ws))})
		case err != nil:
			probs = append(probs, Problem{"protect", fmt.Sprintf("%q: %v", v, err)})
		case !slices.Contains(out, r):
			out = append(out, r)
		}
	}
	return out, probs
}

// DefaultName is the agent and the folder name, plus a short hash of the
// path when that name is taken.
func (m *Manager) DefaultName(agent, primary string) (string, error) {
	base := sandbox.CleanName(filepath.Base(primary))
	if base == "" {
		base = "root"
	}
	name := sandbox.CleanName(agent + "-" + base)
	if _, err := m.Store.Get(name); err != nil {
		return name, nil
	}
	sum := sha256.Sum256([]byte(primary))
	h := hex.EncodeToString(sum[:])[:6]
	if len(name) > 63-7 {
		name = strings.TrimRight(name[:63-7], "-.")
	}
	name += "-" + h
	if _, err := m.Store.Get(name); err == nil {
		e := newErr(Conflict, "", nil, "choose one with --name", "no free default name for %s", primary)
		e.Field = "name"
		return "", e
	}
	return name, nil
}

// DescribeWorkspaces lists workspaces for a message.
func DescribeWorkspaces(ws []sandbox.Workspace) string {
	var s []string
	for _, w := range ws {
		p := w.Path
		if w.ReadOnly {
			p += ":ro"
		}
		s = append(s, p)
	}
	return strings.Join(s, " ")
}

// TemplateAgentWarning says when a template sbx built (a built-in one, or
// one saved from a sandbox) was built for other agents than the one about
// to run in it, "" otherwise. Images record no agents and are not
// second-guessed.
func TemplateAgentWarning(t template.Template, a agents.Spec) string {
	builtBySbx := strings.HasPrefix(t.Source, "debootstrap") || strings.HasPrefix(t.Source, "sandbox ")
	if a.Name == "shell" || !builtBySbx || slices.Contains(t.Agents, a.Name) {
		return ""
	}
	builtFor := "the shell only"
	if len(t.Agents) > 0 {
		builtFor = strings.Join(t.Agents, ", ")
	}
	return fmt.Sprintf("template %s was built for %s, not %s; %s may be missing in it", t.Name, builtFor, a.Name, a.Argv[0])
}

// HostGitIdentity reads the caller's git user.name and user.email (global
// and system configuration; under sudo, the sudo user's), or nil when git
// or both values are missing.
func HostGitIdentity(ctx context.Context) *sandbox.GitIdentity {
	git, err := exec.LookPath("git")
	if err != nil {
		return nil
	}
	env := os.Environ()
	if os.Getuid() == 0 && os.Getenv("SUDO_USER") != "" {
		if u, err := user.Lookup(os.Getenv("SUDO_USER")); err == nil && u.HomeDir != "" {
			env = append(env, "HOME="+u.HomeDir, "XDG_CONFIG_HOME="+u.HomeDir+"/.config")
		}
	}
	get := func(key string) string {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, git, "config", "--get", key)
		// Outside any repository: only the user's and the system's values.
		cmd.Dir = "/"
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	id := &sandbox.GitIdentity{Name: get("user.name"), Email: get("user.email")}
	if id.Name == "" && id.Email == "" {
		return nil
	}
	return id
}

// wantAgentDomains decides whether the agent's domains become sandbox
// rules: always, except under deny-all unless allow says so, so that
// deny-all really denies everything. A warning says when they are left
// out.
func (m *Manager) wantAgentDomains(a agents.Spec, allow bool) bool {
	if len(a.Domains) == 0 {
		return false
	}
	if allow {
		return true
	}
	pf, err := policy.NewStore(m.Dirs.Config).Load()
	if err != nil {
		// Fail closed, and say why.
		m.emit(Event{Kind: Warning, Text: fmt.Sprintf("cannot read the network policy (%v), so %s's domains are not added; fix it (`sbx policy ls`) and add them with --allow-agent-domains", err, a.Name)})
		return false
	}
	if pf.Default.Effective() == policy.PresetDenyAll {
		m.emit(Event{Kind: Warning, Text: fmt.Sprintf("the default policy denies all network access, so %s's domains (%s) are not allowed; "+
			"add them with --allow-agent-domains or `sbx policy allow network`", a.Name, strings.Join(a.Domains, ", "))})
		return false
	}
	return true
}

// AgentRules are the agent's domains as allow rules (origin "agent:NAME")
// for a new sandbox whose configuration says so. A user's deny rule still
// wins over them.
func AgentRules(a agents.Spec) ([]Rule, error) {
	var rules []Rule
	for _, d := range a.Domains {
		r, err := policy.ParseResource(d)
		if err != nil {
			return nil, fmt.Errorf("agent %s domain %q: %w", a.Name, d, err)
		}
		rules = append(rules, Rule{Action: policy.Allow, Resource: r, Origin: agents.Origin(a)})
	}
	return rules, nil
}

// hostMemory is the machine's memory and swap in bytes, 0 when unknown.
func hostMemory() int64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return (int64(si.Totalram) + int64(si.Totalswap)) * int64(si.Unit)
}

// ResolveWorkspaces turns host paths (PATH, or PATH:ro for a read-only
// one; relative ones from the current folder) into workspaces: absolute,
// symlinks resolved, existing folders, none twice, the first writable. A
// refused one is Invalid on "workspace".
func ResolveWorkspaces(paths []string) ([]sandbox.Workspace, error) {
	var out []sandbox.Workspace
	bad := func(hint, format string, args ...any) error {
		e := invalid(nil, hint, format, args...)
		e.Field = "workspace"
		return e
	}
	for i, a := range paths {
		ro := false
		if strings.HasSuffix(a, ":ro") {
			ro = true
			a = strings.TrimSuffix(a, ":ro")
		}
		abs, err := filepath.Abs(a)
		if err != nil {
			return nil, bad("", "bad workspace path %q: %v", a, err)
		}
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, bad("create it or give an existing folder", "workspace %s does not exist", abs)
		}
		if !st.IsDir() {
			return nil, bad("give a folder, not a file", "workspace %s is not a folder", abs)
		}
		if i == 0 && ro {
			return nil, bad("only extra workspaces may be read-only", "the primary workspace %s cannot be :ro", abs)
		}
		for _, w := range out {
			if w.Path == abs {
				return nil, bad("", "workspace %s is given twice", abs)
			}
		}
		out = append(out, sandbox.Workspace{Path: abs, ReadOnly: ro})
	}
	return out, nil
}

// FindFor returns the sandbox of agent on primary workspace, if one
// exists (a create without a name finds it rather than making a second).
func (m *Manager) FindFor(agent, primary string) (*sandbox.Sandbox, bool) {
	all, _ := m.Store.List()
	for _, s := range all {
		if s.Config.Agent == agent && len(s.Config.Workspaces) > 0 && s.Config.Workspaces[0].Path == primary {
			return s, true
		}
	}
	return nil, false
}
