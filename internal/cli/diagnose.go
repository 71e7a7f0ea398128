package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/bootassets"
	"github.com/sbx-dev/sbx/internal/hostcheck"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/template"
)

// check is one line of `sbx diagnose`.
type check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

func newDiagnoseCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "diagnose",
		Aliases: []string{"doctor"},
		Short:   "Check this host: QEMU, KVM, kernel, templates, disk",
		Long: `Report whether this host can run sandboxes, each finding with a fix:
whether KVM really runs a guest here (probed once with a tiny boot; the
result is cached), QEMU and its version, the guest kernel and initramfs, the
templates, the state folder and free disk space. Nothing is downloaded or
built: missing assets are reported, and the next ` + "`sbx run`" + ` prepares them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := e.diagnose(cmd.Context())
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(checks)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			bad := 0
			for _, c := range checks {
				mark := "ok"
				if !c.OK {
					mark = "FAIL"
					bad++
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", mark, c.Name, c.Detail)
				if c.Fix != "" {
					fmt.Fprintf(tw, "\t\tfix: %s\n", c.Fix)
				}
			}
			tw.Flush()
			fmt.Fprintln(e.stdout, "\nenvironment:")
			for _, k := range paths.Knobs {
				v := os.Getenv(k.Name)
				if v == "" {
					v = "(unset)"
				}
				fmt.Fprintf(e.stdout, "  %-20s %s  %s\n", k.Name, v, k.Help)
			}
			if bad > 0 {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (e *env) diagnose(ctx context.Context) []check {
	var out []check
	add := func(c check) { out = append(out, c) }
	add(check{Name: "platform", OK: runtime.GOOS == "linux" && runtime.GOARCH == "amd64", Detail: runtime.GOOS + "/" + runtime.GOARCH, Fix: ""})

	qemu, qver, qerr := hostcheck.QEMU(ctx, e.manager().AllWorkspaces(nil))
	if qerr != nil {
		add(check{Name: "qemu", Detail: qerr.Error(), Fix: "apt-get install qemu-system-x86 (or `make deps`)"})
	} else {
		add(check{Name: "qemu", OK: true, Detail: qemu + " " + qver})
	}
	if p, err := hostcheck.QEMUImg(ctx, e.manager().AllWorkspaces(nil)); err != nil {
		add(check{Name: "qemu-img", Detail: err.Error(), Fix: "apt-get install qemu-utils"})
	} else {
		add(check{Name: "qemu-img", OK: true, Detail: p})
	}

	k, kerr := bootassets.CachedKernel(e.dirs.Cache, e.manager().KernelOptions())
	if kerr != nil {
		add(check{Name: "kernel", Detail: kerr.Error(), Fix: "`sbx run` downloads Debian's linux-image-amd64 on first use (needs `apt-get update`)"})
	} else {
		add(check{Name: "kernel", OK: true, Detail: k.Release + " (" + k.Source + ") " + k.Path})
	}
	agent, aerr := lifecycle.AgentBinary()
	if aerr != nil {
		add(check{Name: "guest agent", Detail: aerr.Error(), Fix: "`make build` puts sbx-agent next to sbx"})
	} else {
		add(check{Name: "guest agent", OK: true, Detail: agent})
	}

	switch {
	case qerr != nil || kerr != nil || aerr != nil:
		add(check{Name: "kvm", Detail: "not probed: needs QEMU, the kernel and the agent first"})
	default:
		initrd, err := bootassets.EnsureInitramfs(ctx, e.dirs.Cache, k, agent)
		if err != nil {
			add(check{Name: "kvm", Detail: "not probed: " + err.Error()})
			break
		}
		ok, reason, err := hostcheck.KVMUsable(ctx, e.dirs.Cache, qemu, k.Path, initrd)
		switch {
		case err != nil:
			add(check{Name: "kvm", Detail: "probe failed: " + err.Error(), Fix: "sandboxes use TCG emulation (slow)"})
		case ok:
			add(check{Name: "kvm", OK: true, Detail: "a guest boots under KVM"})
		default:
			// Not a failure: TCG works, only slower.
			add(check{Name: "kvm", OK: true, Detail: "unusable (" + reason + "); sandboxes run under TCG emulation, which is slow", Fix: "on bare metal or a VM with nested virtualisation, KVM is used automatically"})
		}
	}

	ts, terr := template.List(e.dirs.Cache)
	switch {
	case terr != nil:
		add(check{Name: "templates", Detail: terr.Error()})
	case len(ts) == 0:
		add(check{Name: "templates", OK: true, Detail: "none built yet; the first `sbx run` builds `shell` (needs root for debootstrap, about a minute)"})
	default:
		d := ""
		for i, t := range ts {
			if i > 0 {
				d += ", "
			}
			d += t.Name + " (" + sandbox.FormatSize(t.SizeBytes) + ")"
		}
		add(check{Name: "templates", OK: true, Detail: d})
	}

	if p, err := exec.LookPath("npm"); err != nil {
		add(check{Name: "npm", OK: true, Detail: "not found: needed only to build the agents template (claude, codex, gemini, copilot, opencode)", Fix: "apt-get install npm (or `make deps-agents`)"})
	} else {
		add(check{Name: "npm", OK: true, Detail: p + " (installs the agent CLIs with the host's registry settings)"})
	}
	add(dirCheck("state folder", e.dirs.Data))
	add(dirCheck("cache folder", e.dirs.Cache))
	return out
}

// dirCheck reports a folder's free space; below 5 GiB is a failure.
func dirCheck(name, dir string) check {
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := parentDir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	free, err := hostcheck.DiskFree(probe)
	if err != nil {
		return check{Name: name, Detail: dir + ": " + err.Error()}
	}
	c := check{Name: name, OK: free >= 5<<30, Detail: fmt.Sprintf("%s (%s free)", dir, sandbox.FormatSize(int64(free)))}
	if !c.OK {
		c.Fix = "free disk space: each sandbox's disk grows as it is used, and templates take 1 GiB (shell) to 4 GiB (agents)"
	}
	return c
}

func parentDir(p string) string {
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return "/"
}
