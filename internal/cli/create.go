package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

const (
	defaultMemory     = "2g"
	defaultDisk       = "20g"
	defaultDockerDisk = "10g"
)

// createFlags are the flags `run` and `create` share.
type createFlags struct {
	name     string
	cpus     int
	memory   string
	disk     string
	accel    string
	env      []string
	publish  []string
	denyNet  []string
	detached bool
	rm       bool

	template          string
	dockerDisk        string
	allowAgentDomains bool
	noGitIdentity     bool
	protect           []string
	protectDefaults   bool
	cold              bool
	clone             bool
	cloneUntracked    bool
}

func (f *createFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "sandbox name (default: the agent and the folder name)")
	fl.IntVar(&f.cpus, "cpus", 0, "virtual CPUs (default 1 under TCG emulation, 2 with KVM)")
	fl.StringVarP(&f.memory, "memory", "m", defaultMemory, "guest memory, e.g. 2g or 4096m")
	fl.StringVar(&f.disk, "disk", defaultDisk, "root disk size (sparse), e.g. 20g")
	fl.StringVar(&f.accel, "accel", "auto", "CPU accelerator: auto, kvm or tcg")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "environment variable KEY=VALUE for the agent session (repeatable)")
	fl.StringArrayVar(&f.publish, "publish", nil, "publish [[HOST_IP:]HOST_PORT:]SANDBOX_PORT on the host (repeatable; see 'sbx ports')")
	fl.StringArrayVar(&f.denyNet, "deny-network", nil, "deny these network resources to this sandbox (comma-separated, repeatable; see 'sbx policy deny')")
	fl.StringVarP(&f.template, "template", "t", "", "`TEMPLATE`, image file or image reference to boot (default: the agent's; see 'sbx template ls')")
	fl.StringVar(&f.dockerDisk, "docker-disk", defaultDockerDisk, "size of the sparse disk for /var/lib/docker, in templates with Docker Engine")
	fl.BoolVar(&f.allowAgentDomains, "allow-agent-domains", false, "add the agent's domains as sandbox rules even when the default policy is deny-all")
	fl.BoolVar(&f.noGitIdentity, "no-git-identity", false, "do not set the host's git user.name and user.email in the sandbox")
	fl.StringArrayVar(&f.protect, "protect", nil, "keep this path of the workspace read-only for the agent, enforced on the host (repeatable)")
	fl.BoolVar(&f.protectDefaults, "protect-defaults", false, "keep .git/hooks and .git/config read-only for the agent")
	fl.BoolVar(&f.clone, "clone", false, "clone mode: the agent works in a clone of the repository on the VM's own disk; nothing of the host folder is shared, the clone comes from a bundle of its commits (fixed at create; see docs/clone.md)")
	fl.BoolVar(&f.cloneUntracked, "clone-untracked", false, "with --clone, also copy the untracked files git does not ignore (.env and the like are left out otherwise)")
	fl.BoolVar(&f.cold, "cold", false, "boot the kernel instead of resuming the template's pre-booted snapshot (a new sandbox's first start)")
}

// target is what the positional arguments of run/create resolve to.
type target struct {
	agent      agentSpec
	existing   *sandbox.Sandbox
	workspaces []sandbox.Workspace
	// explicitPaths is true when paths were given on the command line.
	explicitPaths bool
}

// resolveTarget reads [AGENT] [PATH...]: the first argument is a known
// agent, else an existing sandbox, else a path.
func (e *env) resolveTarget(args []string) (target, error) {
	var t target
	t.agent, _ = findAgent("shell")
	if len(args) > 0 {
		if a, ok := findAgent(args[0]); ok {
			t.agent = a
			args = args[1:]
		} else if sb, err := e.store.Get(args[0]); err == nil {
			t.existing = sb
			a, ok := findAgent(sb.Config.Agent)
			if !ok {
				return t, userErr(nil, "", "sandbox %s runs agent %q, which this sbx does not know", sb.Config.Name, sb.Config.Agent)
			}
			t.agent = a
			args = args[1:]
		} else if _, statErr := os.Stat(args[0]); statErr != nil && !strings.Contains(args[0], "/") && !strings.HasSuffix(args[0], ":ro") {
			return t, userErr(nil, "known agents: "+agentNames()+"; list sandboxes with `sbx ls`", "%q is not an agent, a sandbox or a folder", args[0])
		}
	}
	if len(args) == 0 {
		wd, err := os.Getwd()
		if err != nil {
			return t, userErr(err, "", "cannot read the current folder")
		}
		args = []string{wd}
	} else {
		t.explicitPaths = true
	}
	for i, a := range args {
		ro := false
		if strings.HasSuffix(a, ":ro") {
			ro = true
			a = strings.TrimSuffix(a, ":ro")
		}
		abs, err := filepath.Abs(a)
		if err != nil {
			return t, userErr(err, "", "bad workspace path %q", a)
		}
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
		st, err := os.Stat(abs)
		if err != nil {
			return t, userErr(nil, "create it or give an existing folder", "workspace %s does not exist", abs)
		}
		if !st.IsDir() {
			return t, userErr(nil, "give a folder, not a file", "workspace %s is not a folder", abs)
		}
		if i == 0 && ro {
			return t, userErr(nil, "only extra workspaces may be read-only", "the primary workspace %s cannot be :ro", abs)
		}
		for _, w := range t.workspaces {
			if w.Path == abs {
				return t, userErr(nil, "", "workspace %s is given twice", abs)
			}
		}
		t.workspaces = append(t.workspaces, sandbox.Workspace{Path: abs, ReadOnly: ro})
	}
	if err := e.checkStateWorkspaces(t.workspaces); err != nil {
		return t, err
	}
	return t, nil
}

// checkStateWorkspaces refuses a workspace that is, holds or lies inside
// one of sbx's own folders (lifecycle.Manager.CheckWorkspaces).
func (e *env) checkStateWorkspaces(ws []sandbox.Workspace) error {
	return e.manager().CheckWorkspaces(ws)
}

// findOrCreate returns the sandbox the target names, creating it when it
// does not exist. It rejects creation flags that differ from an existing
// sandbox's. created reports whether the sandbox is new.
func (e *env) findOrCreate(cmd *cobra.Command, f *createFlags, t target, nf netFlags) (sb *sandbox.Sandbox, created bool, err error) {
	if f.name != "" {
		if err := sandbox.ValidateName(f.name); err != nil {
			return nil, false, userErr(nil, "use 2 to 63 letters, digits, '-' and '.', starting with a letter or digit", "invalid sandbox name %q", f.name)
		}
	}
	if sb, ok := e.findExisting(f, t); ok {
		return sb, false, e.checkSameFlags(cmd, f, t, sb)
	}
	// Validate every flag before any slow work.
	if _, err := e.newConfig(cmd, f, t, "x"); err != nil {
		return nil, false, err
	}
	// The template may take minutes on first use; it has its own lock, so
	// other sbx commands are not held up meanwhile.
	tmpl, err := e.resolveTemplate(cmd.Context(), f.template, t.agent)
	if err != nil {
		return nil, false, err
	}
	e.warnTemplateAgent(tmpl, t.agent)
	name := f.name
	if name == "" {
		if name, err = e.defaultName(t); err != nil {
			return nil, false, err
		}
	}
	cfg, err := e.newConfig(cmd, f, t, name)
	if err != nil {
		return nil, false, err
	}
	if !f.noGitIdentity {
		cfg.Git = hostGitIdentity(cmd.Context())
	}
	cfg.AgentDomains = e.wantAgentDomains(t.agent, f)
	req := lifecycle.CreateRequest{Config: cfg, Template: tmpl, Cold: f.cold, Ports: nf.publish}
	// The agent's rules and --deny-network go in with the sandbox: it
	// never exists without them.
	if cfg.AgentDomains {
		if req.Rules, err = agentRules(t.agent); err != nil {
			return nil, false, err
		}
	}
	for _, r := range nf.deny {
		req.Rules = append(req.Rules, lifecycle.Rule{Action: policy.Deny, Resource: r, Origin: policy.OriginUser})
	}
	sb, err = e.manager().Create(cmd.Context(), req)
	if le, ok := lifecycle.AsError(err); ok {
		switch le.Field {
		case "name":
			// Another command may have created it meanwhile.
			if sb, ok := e.findExisting(f, t); ok {
				return sb, false, e.checkSameFlags(cmd, f, t, sb)
			}
		case "disk":
			return nil, false, userErr(err, "give a larger --disk", "--disk %s is smaller than the template", f.disk)
		}
	}
	if err != nil {
		return nil, false, err
	}
	e.warnUnwritable(sb)
	e.warnProtect(f, sb)
	return sb, true, nil
}

// findExisting finds the sandbox the target names: the SANDBOX argument,
// else --name, else (without --name) the sandbox of the same agent on the
// same primary workspace.
func (e *env) findExisting(f *createFlags, t target) (*sandbox.Sandbox, bool) {
	if t.existing != nil {
		return t.existing, true
	}
	if f.name != "" {
		sb, err := e.store.Get(f.name)
		return sb, err == nil
	}
	all, _ := e.store.List()
	for _, s := range all {
		if s.Config.Agent == t.agent.Name && len(s.Config.Workspaces) > 0 && s.Config.Workspaces[0].Path == t.workspaces[0].Path {
			return s, true
		}
	}
	return nil, false
}

// newConfig validates the flags (reporting every problem at once) and
// returns the configuration of a new sandbox called name.
func (e *env) newConfig(cmd *cobra.Command, f *createFlags, t target, name string) (sandbox.Config, error) {
	var errs []error
	mem, err := sandbox.ParseSize(f.memory, "m")
	if err != nil {
		errs = append(errs, fmt.Errorf("--memory: %w", err))
	} else if mem < 256<<20 {
		errs = append(errs, fmt.Errorf("--memory %s: at least 256m", f.memory))
	} else if total := hostMemory(); total > 0 && mem > total {
		// QEMU cannot reserve more than the machine has: it would fail
		// at start with a reason only its log shows.
		errs = append(errs, fmt.Errorf("--memory %s: more than this machine's memory and swap (%dm)", f.memory, total>>20))
	}
	dsk, err := sandbox.ParseSize(f.disk, "g")
	if err != nil {
		errs = append(errs, fmt.Errorf("--disk: %w", err))
	}
	dockerDisk, err := sandbox.ParseSize(f.dockerDisk, "g")
	if err != nil {
		errs = append(errs, fmt.Errorf("--docker-disk: %w", err))
	} else if dockerDisk < 1<<30 {
		errs = append(errs, fmt.Errorf("--docker-disk %s: at least 1g", f.dockerDisk))
	}
	if f.cpus < 0 || f.cpus > 64 {
		errs = append(errs, fmt.Errorf("--cpus %d: use 1 to 64", f.cpus))
	}
	switch f.accel {
	case "auto", "kvm", "tcg":
	default:
		errs = append(errs, fmt.Errorf("--accel %q: use auto, kvm or tcg", f.accel))
	}
	var cl *sandbox.Clone
	if f.cloneUntracked && !f.clone {
		errs = append(errs, errors.New("--clone-untracked needs --clone"))
	}
	if f.clone {
		ws, c, err := e.cloneWorkspaces(cmd.Context(), f, t)
		if err != nil {
			return sandbox.Config{}, err
		}
		t.workspaces, cl = ws, c
	}
	protect, perrs := resolveProtectFlags(f.protect, t.workspaces)
	errs = append(errs, perrs...)
	if (len(protect) > 0 || f.protectDefaults) && os.Geteuid() != 0 {
		errs = append(errs, fmt.Errorf("--protect and --protect-defaults: %w; run sbx as root (sudo), or leave them out", supervisor.ErrProtectNeedsRoot))
	}
	if err := errors.Join(errs...); err != nil {
		return sandbox.Config{}, userErr(nil, "see `sbx "+cmd.Name()+" --help`", "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	uid, gid := lifecycle.GuestIDs()
	cfg := sandbox.Config{
		ID:         sandbox.NewID(),
		MachineID:  sandbox.NewMachineID(),
		Name:       name,
		Agent:      t.agent.Name,
		Workspaces: t.workspaces,
		CPUs:       f.cpus,
		MemoryMiB:  int(mem >> 20),
		DiskBytes:  dsk,
		Accel:      f.accel,
		UID:        uid,
		GID:        gid,
		MAC:        sandbox.NewMAC(),
		Created:    time.Now().UTC(),

		DockerDiskBytes: dockerDisk,
		Protect:         protect,
		ProtectDefaults: f.protectDefaults,
		Clone:           cl,
	}
	// What would fail every start (a hard-linked protected file, a default
	// path that is a symlink, ...) is refused now.
	if _, err := supervisor.PlanNotes(cfg); err != nil {
		return sandbox.Config{}, userErr(nil, "see \"Protected paths\" in docs/workspace-trust.md", "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return cfg, nil
}

// resolveProtectFlags resolves --protect values (relative ones from the
// primary workspace, symlinks resolved on the host) to absolute paths
// inside the workspaces, without duplicates.
func resolveProtectFlags(vals []string, ws []sandbox.Workspace) ([]string, []error) {
	var out []string
	var errs []error
	for _, v := range vals {
		r, _, err := supervisor.ResolveProtect(v, ws)
		switch {
		case errors.Is(err, supervisor.ErrProtectMissing):
			errs = append(errs, fmt.Errorf("--protect %s: %w; create it first (sbx does not create files in the workspace), or leave it out", v, err))
		case errors.Is(err, supervisor.ErrProtectOutside):
			errs = append(errs, fmt.Errorf("--protect %s: %w (%s); the agent cannot reach it anyway", v, err, describeWorkspaces(ws)))
		case err != nil:
			errs = append(errs, fmt.Errorf("--protect %q: %w", v, err))
		case !slices.Contains(out, r):
			out = append(out, r)
		}
	}
	return out, errs
}

// warnProtect says on stderr what protection will not cover or adds:
// default paths that do not exist (the agent could create them), protected
// paths reached through a symlink inside a workspace (the agent could
// re-point the link), link targets protected too (supervisor.PlanNotes).
func (e *env) warnProtect(f *createFlags, sb *sandbox.Sandbox) {
	for _, v := range f.protect {
		if r, viaLink, err := supervisor.ResolveProtect(v, sb.Config.Workspaces); err == nil && viaLink {
			fmt.Fprintf(e.stderr, "sbx: warning: --protect %s: protecting %s, where a symlink in the workspace leads; the agent can change the link itself\n", v, r)
		}
	}
	notes, _ := supervisor.PlanNotes(sb.Config)
	for _, n := range notes {
		fmt.Fprintf(e.stderr, "sbx: warning: protected paths: %s\n", n)
	}
}

// defaultName is the agent and the folder name, plus a short hash of the
// path when that name is taken.
func (e *env) defaultName(t target) (string, error) {
	base := sandbox.CleanName(filepath.Base(t.workspaces[0].Path))
	if base == "" {
		base = "root"
	}
	name := sandbox.CleanName(t.agent.Name + "-" + base)
	if _, err := e.store.Get(name); err != nil {
		return name, nil
	}
	sum := sha256.Sum256([]byte(t.workspaces[0].Path))
	h := hex.EncodeToString(sum[:])[:6]
	if len(name) > 63-7 {
		name = strings.TrimRight(name[:63-7], "-.")
	}
	name += "-" + h
	if _, err := e.store.Get(name); err == nil {
		return "", userErr(nil, "choose one with --name", "no free default name for %s", t.workspaces[0].Path)
	}
	return name, nil
}

// checkSameFlags rejects creation flags given again with other values for
// an existing sandbox.
func (e *env) checkSameFlags(cmd *cobra.Command, f *createFlags, t target, sb *sandbox.Sandbox) error {
	c := sb.Config
	var bad []string
	fl := cmd.Flags()
	if fl.Changed("cpus") && f.cpus != c.CPUs {
		bad = append(bad, fmt.Sprintf("--cpus (sandbox has %d)", c.CPUs))
	}
	if fl.Changed("memory") {
		if m, err := sandbox.ParseSize(f.memory, "m"); err != nil || int(m>>20) != c.MemoryMiB {
			bad = append(bad, fmt.Sprintf("--memory (sandbox has %dm)", c.MemoryMiB))
		}
	}
	if fl.Changed("disk") {
		if d, err := sandbox.ParseSize(f.disk, "g"); err != nil || d != c.DiskBytes {
			bad = append(bad, fmt.Sprintf("--disk (sandbox has %s)", sandbox.FormatSize(c.DiskBytes)))
		}
	}
	if fl.Changed("docker-disk") {
		if d, err := sandbox.ParseSize(f.dockerDisk, "g"); err != nil || d != c.DockerDiskBytes {
			bad = append(bad, fmt.Sprintf("--docker-disk (sandbox has %s)", sandbox.FormatSize(c.DockerDiskBytes)))
		}
	}
	// Only a template name can be compared: a file or an image reference
	// becomes a template of a derived name.
	if fl.Changed("template") && isTemplateName(f.template) && f.template != c.Template.Name {
		bad = append(bad, fmt.Sprintf("--template (sandbox has %s)", c.Template.Name))
	}
	if fl.Changed("accel") && f.accel != c.Accel {
		bad = append(bad, fmt.Sprintf("--accel (sandbox has %s)", c.Accel))
	}
	if fl.Changed("protect") {
		if p, errs := resolveProtectFlags(f.protect, c.Workspaces); len(errs) > 0 || !supervisor.SameProtect(p, c.Protect) {
			bad = append(bad, "--protect (sandbox has "+describeProtect(c.Protect)+")")
		}
	}
	if fl.Changed("protect-defaults") && f.protectDefaults != c.ProtectDefaults {
		bad = append(bad, fmt.Sprintf("--protect-defaults (sandbox has %t)", c.ProtectDefaults))
	}
	if fl.Changed("clone") && f.clone != (c.Clone != nil) {
		mode := "direct"
		if c.Clone != nil {
			mode = "clone"
		}
		bad = append(bad, "--clone (the mode is fixed at create; sandbox is in "+mode+" mode)")
	}
	if c.Clone != nil {
		if t.explicitPaths && (len(t.workspaces) != 1 || t.workspaces[0].Path != c.Workspaces[0].Path) {
			bad = append(bad, "workspace paths (sandbox is a clone of "+c.Workspaces[0].Path+")")
		}
	} else if t.explicitPaths && !sameWorkspaces(t.workspaces, c.Workspaces) {
		bad = append(bad, "workspace paths (sandbox has "+describeWorkspaces(c.Workspaces)+")")
	}
	if len(bad) > 0 {
		return userErr(nil, "remove the sandbox with `sbx rm "+c.Name+"` to change them, or use another --name",
			"sandbox %s exists with other settings: %s", c.Name, strings.Join(bad, ", "))
	}
	return nil
}

// isTemplateName reports whether a --template value names a template
// rather than a file or an image reference.
func isTemplateName(v string) bool {
	if strings.ContainsAny(v, "/:@") {
		return false
	}
	_, err := os.Stat(v)
	return err != nil
}

func sameWorkspaces(a, b []sandbox.Workspace) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func describeProtect(ps []string) string {
	if len(ps) == 0 {
		return "none"
	}
	return strings.Join(ps, " ")
}

func describeWorkspaces(ws []sandbox.Workspace) string {
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

func newCreateCmd(e *env) *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create [flags] [AGENT] [PATH...]",
		Short: "Create a sandbox and boot it in the background",
		Long: `Create a sandbox for AGENT (default: shell) on the workspace PATH (default:
the current folder; more paths are extra workspaces, PATH:ro read-only), boot
its VM in the background and print its name. Attach with ` + "`sbx run NAME`" + ` or
` + "`sbx exec NAME CMD`" + `; it keeps running until ` + "`sbx stop`" + `. The VM resumes
its template's pre-booted snapshot (saved on first use) unless --cold.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := e.resolveTarget(args)
			if err != nil {
				return err
			}
			if t.existing != nil {
				return userErr(nil, "use `sbx run "+t.existing.Config.Name+"` to start it", "sandbox %s already exists", t.existing.Config.Name)
			}
			if f.name != "" {
				if _, err := e.store.Get(f.name); err == nil {
					return userErr(nil, "pick another --name or remove it with `sbx rm "+f.name+"`", "sandbox %s already exists", f.name)
				}
			}
			nf, err := f.parseNet()
			if err != nil {
				return err
			}
			e.cold = f.cold
			sb, created, err := e.findOrCreate(cmd, &f, t, nf)
			if err != nil {
				return err
			}
			if !created {
				return userErr(nil, "use `sbx run "+sb.Config.Name+"` to start it, or give another --name", "sandbox %s already exists for %s", sb.Config.Name, sb.PrimaryWorkspace())
			}
			if err := e.startNew(cmd.Context(), sb, startInBackground); err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, sb.Config.Name)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().Lookup("env").Hidden = true
	return cmd
}

// warnUnwritable says when the guest user will not be able to write the
// primary workspace, which happens when root runs sbx on a root-owned
// folder (the guest user then has uid 1000).
func (e *env) warnUnwritable(sb *sandbox.Sandbox) {
	ws := sb.PrimaryWorkspace()
	st, err := os.Stat(ws)
	if err != nil {
		return
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	uid, gid := sb.Config.UID, sb.Config.GID
	mode := st.Mode().Perm()
	writable := (int(sys.Uid) == uid && mode&0o200 != 0) || (int(sys.Gid) == gid && mode&0o020 != 0) || mode&0o002 != 0
	if !writable {
		fmt.Fprintf(e.stderr, "sbx: warning: %s belongs to uid %d; the sandbox (uid %d) cannot write there, not even with sudo in the guest. Run sbx as the folder's owner, or set SUDO_UID/SUDO_GID.\n", ws, sys.Uid, uid)
	}
}

// netFlags are --publish and --deny-network, parsed.
type netFlags struct {
	publish []sandbox.Port
	deny    []policy.Resource
}

// parseNet checks --publish and --deny-network before any slow work.
func (f *createFlags) parseNet() (netFlags, error) {
	var n netFlags
	for _, s := range f.publish {
		p, err := sandbox.ParsePort(s)
		if err != nil {
			return n, userErr(nil, "", "--publish: %v", err)
		}
		n.publish = append(n.publish, p)
	}
	for _, s := range f.denyNet {
		rs, err := policy.ParseResources(s)
		if err != nil {
			return n, userErr(nil, "see `sbx policy deny --help` for the forms", "--deny-network: %v", err)
		}
		n.deny = append(n.deny, rs...)
	}
	return n, nil
}

// applyNet adds deny rules and published ports to an existing sandbox
// (a new one gets them with its creation).
func (e *env) applyNet(cmd *cobra.Command, sb *sandbox.Sandbox, n netFlags) error {
	if len(n.deny) > 0 {
		err := e.policyStore().Update(func(f *policy.File) error {
			for _, r := range n.deny {
				rule := policy.NewRule(policy.Deny, r, sb.Config.ID, "user", time.Now().UTC())
				if !slices.ContainsFunc(f.Rules, func(x policy.Rule) bool { return x.ID == rule.ID }) {
					f.Rules = append(f.Rules, rule)
				}
			}
			return nil
		})
		if err != nil {
			return userErr(err, "", "cannot add the --deny-network rules of %s", sb.Config.Name)
		}
	}
	if len(n.publish) > 0 {
		if _, err := e.changePorts(cmd, sb, n.publish, nil); err != nil {
			return err
		}
	}
	return nil
}

// hostMemory is the machine's memory and swap in bytes (0 when unknown):
// the most the kernel lets QEMU reserve at once.
func hostMemory() int64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return (int64(si.Totalram) + int64(si.Totalswap)) * int64(si.Unit)
}
