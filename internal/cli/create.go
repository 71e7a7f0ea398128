package cli

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/agents"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
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
	fl.StringVarP(&f.memory, "memory", "m", lifecycle.DefaultMemory, "guest memory, e.g. 2g or 4096m")
	fl.StringVar(&f.disk, "disk", lifecycle.DefaultDisk, "root disk size (sparse), e.g. 20g")
	fl.StringVar(&f.accel, "accel", "auto", "CPU accelerator: auto, kvm or tcg")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "environment variable KEY=VALUE for the agent session (repeatable)")
	fl.StringArrayVar(&f.publish, "publish", nil, "publish [[HOST_IP:]HOST_PORT:]SANDBOX_PORT on the host (repeatable; see 'sbx ports')")
	fl.StringArrayVar(&f.denyNet, "deny-network", nil, "deny these network resources to this sandbox (comma-separated, repeatable; see 'sbx policy deny')")
	fl.StringVarP(&f.template, "template", "t", "", "`TEMPLATE`, image file or image reference to boot (default: the agent's; see 'sbx template ls')")
	fl.StringVar(&f.dockerDisk, "docker-disk", lifecycle.DefaultDockerDisk, "size of the sparse disk for /var/lib/docker, in templates with Docker Engine")
	fl.BoolVar(&f.allowAgentDomains, "allow-agent-domains", false, "add the agent's domains as sandbox rules even when the default policy is deny-all")
	fl.BoolVar(&f.noGitIdentity, "no-git-identity", false, "do not set the host's git user.name and user.email in the sandbox")
	fl.StringArrayVar(&f.protect, "protect", nil, "keep this path of the workspace read-only for the agent, enforced on the host (repeatable)")
	fl.BoolVar(&f.protectDefaults, "protect-defaults", false, "keep .git/hooks and .git/config read-only for the agent")
	fl.BoolVar(&f.clone, "clone", false, "clone mode: the agent works in a clone of the repository on the VM's own disk; nothing of the host folder is shared, the clone comes from a bundle of its commits (fixed at create; see docs/clone.md)")
	fl.BoolVar(&f.cloneUntracked, "clone-untracked", false, "with --clone, also copy the untracked files git does not ignore (.env and the like are left out otherwise)")
	fl.BoolVar(&f.cold, "cold", false, "boot the kernel instead of resuming the template's pre-booted snapshot (a new sandbox's first start)")
}

// check refuses flag values no sandbox could take, before anything is
// made: an explicit --cpus 0 (0 is the default's stand-in, not a count).
func (f *createFlags) check(cmd *cobra.Command) error {
	if cmd.Flags().Changed("cpus") && f.cpus == 0 {
		return userErr(nil, "use 1 to 64, or leave --cpus out for the default", "--cpus 0: a VM needs at least one CPU")
	}
	return nil
}

// target is what the positional arguments of run/create resolve to.
type target struct {
	agent      agents.Spec
	existing   *sandbox.Sandbox
	workspaces []sandbox.Workspace
	// explicitPaths is true when paths were given on the command line.
	explicitPaths bool
}

// resolveTarget reads [AGENT] [PATH...]: the first argument is a known
// agent, else an existing sandbox, else a path.
func (e *env) resolveTarget(args []string) (target, error) {
	var t target
	t.agent, _ = agents.Find("shell")
	if len(args) > 0 {
		if a, ok := agents.Find(args[0]); ok {
			t.agent = a
			args = args[1:]
		} else if sb, err := e.store.Get(args[0]); err == nil {
			t.existing = sb
			a, ok := agents.Find(sb.Config.Agent)
			if !ok {
				return t, userErr(nil, "", "sandbox %s runs agent %q, which this sbx does not know", sb.Config.Name, sb.Config.Agent)
			}
			t.agent = a
			args = args[1:]
		} else if _, statErr := os.Stat(args[0]); statErr != nil && !strings.Contains(args[0], "/") && !strings.HasSuffix(args[0], ":ro") {
			return t, userErr(nil, "known agents: "+agents.Names()+"; list sandboxes with `sbx ls`", "%q is not an agent, a sandbox or a folder", args[0])
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
	ws, err := lifecycle.ResolveWorkspaces(args)
	if err != nil {
		return t, err
	}
	t.workspaces = ws
	if err := e.manager().CheckWorkspaces(t.workspaces); err != nil {
		return t, err
	}
	return t, nil
}

// findOrCreate returns the sandbox the target names, creating it when it
// does not exist (lifecycle.Manager.New). It rejects creation flags that
// differ from an existing sandbox's. created reports whether the sandbox
// is new.
func (e *env) findOrCreate(cmd *cobra.Command, f *createFlags, t target, nf netFlags) (sb *sandbox.Sandbox, created bool, err error) {
	if f.name != "" {
		if err := sandbox.ValidateName(f.name); err != nil {
			return nil, false, userErr(nil, "use 2 to 63 letters, digits, '-' and '.', starting with a letter or digit", "invalid sandbox name %q", f.name)
		}
	}
	if sb, ok := e.findExisting(f, t); ok {
		return sb, false, e.checkSameFlags(cmd, f, t, sb)
	}
	sb, err = e.manager().New(cmd.Context(), lifecycle.NewRequest{
		Name: f.name, Agent: t.agent.Name, Workspaces: t.workspaces, Template: f.template,
		Memory: f.memory, Disk: f.disk, DockerDisk: f.dockerDisk, CPUs: f.cpus, Accel: f.accel,
		Protect: f.protect, ProtectDefaults: f.protectDefaults, Clone: f.clone, CloneUntracked: f.cloneUntracked,
		Cold: f.cold, NoGitIdentity: f.noGitIdentity, AllowAgentDomains: f.allowAgentDomains,
		Deny: nf.deny, Ports: nf.publish,
	})
	if le, ok := lifecycle.AsError(err); ok {
		var probs lifecycle.Problems
		switch {
		case errors.As(err, &probs):
			// In the CLI's words: each refused field as its flag.
			var s []string
			for _, p := range probs {
				s = append(s, "--"+p.Field+" "+p.Msg)
			}
			return nil, false, userErr(nil, "see `sbx "+cmd.Name()+" --help`", "%s", strings.Join(s, "; "))
		case le.Code == lifecycle.Conflict && le.Field == "name":
			// Another command may have created it meanwhile.
			if sb, ok := e.findExisting(f, t); ok {
				return sb, false, e.checkSameFlags(cmd, f, t, sb)
			}
		case le.Field == "disk":
			return nil, false, userErr(err, "give a larger --disk", "--disk %s is smaller than the template", f.disk)
		}
	}
	if err != nil {
		return nil, false, err
	}
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
	return e.manager().FindFor(t.agent.Name, t.workspaces[0].Path)
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
		if p, errs := lifecycle.ResolveProtect(f.protect, c.Workspaces); len(errs) > 0 || !supervisor.SameProtect(p, c.Protect) {
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
		bad = append(bad, "workspace paths (sandbox has "+lifecycle.DescribeWorkspaces(c.Workspaces)+")")
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
			if err := f.check(cmd); err != nil {
				return err
			}
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
