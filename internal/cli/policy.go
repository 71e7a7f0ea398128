package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newPolicyCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Choose what sandboxes may reach on the network",
		Long: `Network policy: rules that allow or deny destinations, globally or for one
sandbox, and a default (allow-all, balanced or deny-all) for everything no
rule matches. Deny wins over allow. Changes reach running sandboxes at once.
Loopback, private, link-local and the host's own addresses are reached only
through a rule naming the IP, a CIDR, or localhost:PORT.

Resources (comma-separated): example.com, *.example.com (one label),
**.example.com (any depth), ** (all hosts), host:port, 10.0.0.0/8, fd00::/8,
1.2.3.4, 1.2.3.4:22, [2001:db8::1]:22, localhost:8080.`,
	}
	cmd.AddCommand(
		newPolicyInitCmd(e),
		newPolicyRuleCmd(e, policy.Allow),
		newPolicyRuleCmd(e, policy.Deny),
		newPolicyLsCmd(e),
		newPolicyRmCmd(e),
		newPolicyCheckCmd(e),
		newPolicyLogCmd(e),
		newPolicyResetCmd(e),
	)
	return cmd
}

func (e *env) policyStore() *policy.Store { return policy.NewStore(e.dirs.Config) }

// policyFileErr turns a store error into a UserError.
func policyFileErr(err error) error {
	if _, ok := errors.AsType[*policy.FileError](err); ok {
		return userErr(err, "fix the file, or start over with `sbx policy reset -f`", "%v", err)
	}
	return userErr(err, "", "cannot update the network policy")
}

// presetMenu is the first-use menu, in order.
var presetMenu = []struct {
	preset      policy.Preset
	label, help string
}{
	{policy.PresetAllowAll, "Open", "allow all hosts (never local or private addresses)"},
	{policy.PresetBalanced, "Balanced", "deny by default; allow AI provider APIs, code hosts and container registries"},
	{policy.PresetDenyAll, "Locked Down", "deny all; allow only what you add"},
}

// ensurePolicyDefault makes sure a default preset is chosen. On a terminal
// it asks with a numbered menu; otherwise it takes balanced and says so on
// stderr. It does nothing when a default is already chosen.
func (e *env) ensurePolicyDefault(ctx context.Context) error {
	var choose func() (policy.Preset, error)
	if _, isTerm := terminalFd(e.stdin); isTerm {
		choose = func() (policy.Preset, error) { return e.promptPreset(ctx, e.stdin) }
	}
	return e.manager().EnsurePolicyDefault(choose)
}

// promptPreset shows the menu on stderr and reads a choice from in.
func (e *env) promptPreset(ctx context.Context, in io.Reader) (policy.Preset, error) {
	fmt.Fprintln(e.stderr, "Choose the default network policy for sandboxes:")
	for i, m := range presetMenu {
		fmt.Fprintf(e.stderr, "  %d) %-12s %s\n", i+1, m.label, m.help)
	}
	r := bufio.NewReader(in)
	for range 3 {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		fmt.Fprint(e.stderr, "Choice [2]: ")
		line, err := r.ReadString('\n')
		line = strings.ToLower(strings.TrimSpace(line))
		if line == "" && err == nil {
			return policy.PresetBalanced, nil
		}
		if n, convErr := strconv.Atoi(line); convErr == nil && n >= 1 && n <= len(presetMenu) {
			return presetMenu[n-1].preset, nil
		}
		for _, m := range presetMenu {
			if line == strings.ToLower(m.label) || line == string(m.preset) {
				return m.preset, nil
			}
		}
		if err != nil {
			break
		}
		fmt.Fprintln(e.stderr, "Please answer 1, 2 or 3.")
	}
	return "", userErr(nil, "choose without a prompt: sbx policy init allow-all|balanced|deny-all", "no network policy chosen")
}

func newPolicyInitCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:       "init allow-all|balanced|deny-all",
		Short:     "Choose the default for destinations no rule matches",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"allow-all", "balanced", "deny-all"},
		RunE: func(_ *cobra.Command, args []string) error {
			p, err := policy.ParsePreset(args[0])
			if err != nil {
				return userErr(nil, "sbx policy init allow-all|balanced|deny-all", "unknown default %q", args[0])
			}
			if err := e.manager().SetPolicyDefault(p, false); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "default network policy: %s (%s)\n", p, presetHelp(p))
			return nil
		},
	}
}

func presetHelp(p policy.Preset) string {
	for _, m := range presetMenu {
		if m.preset == p {
			return m.help
		}
	}
	return "not chosen"
}

// networkArg checks the "network" word of `allow network ...`.
func networkArg(args []string) error {
	if len(args) == 0 || args[0] != "network" {
		return userErr(nil, "for example: sbx policy allow network example.com", "only network rules exist; start with the word network")
	}
	return nil
}

// optSandbox is the sandbox --sandbox NAME names (nil for none).
func (e *env) optSandbox(name string) (*sandbox.Sandbox, error) {
	if name == "" {
		return nil, nil
	}
	return e.getSandbox(name)
}

// sandboxScope resolves --sandbox NAME to its id ("" for none).
func (e *env) sandboxScope(name string) (string, error) {
	sb, err := e.optSandbox(name)
	if sb == nil || err != nil {
		return "", err
	}
	return sb.Config.ID, nil
}

// sandboxNames maps sandbox ids to names; sandboxes that cannot be read are
// left out.
func (e *env) sandboxNames() map[string]string {
	all, _ := e.store.List()
	m := map[string]string{}
	for _, sb := range all {
		m[sb.Config.ID] = sb.Config.Name
	}
	return m
}

func newPolicyRuleCmd(e *env, action policy.Action) *cobra.Command {
	var sandboxName string
	cmd := &cobra.Command{
		Use:   string(action) + " network RESOURCES",
		Short: strings.ToUpper(string(action[:1])) + string(action[1:]) + " destinations (comma-separated)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := networkArg(args); err != nil {
				return err
			}
			res, err := policy.ParseResources(args[1])
			if err != nil {
				return userErr(err, "resources look like example.com, *.example.com, **.example.com, example.com:443, 10.0.0.0/8, 1.2.3.4:22, localhost:8080", "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
			}
			sb, err := e.optSandbox(sandboxName)
			if err != nil {
				return err
			}
			if err := e.ensurePolicyDefault(cmd.Context()); err != nil {
				return err
			}
			added, existing, err := e.manager().AddRules(action, res, sb, policy.OriginUser)
			if err != nil {
				return err
			}
			where := "all sandboxes"
			if sandboxName != "" {
				where = "sandbox " + sandboxName
			}
			for _, r := range added {
				fmt.Fprintf(e.stdout, "%s %s for %s (id %s)\n", verbPast(r.Action), r.Resource, where, r.ID)
			}
			for _, r := range existing {
				fmt.Fprintf(e.stdout, "%s %s for %s already (id %s)\n", verbPast(r.Action), r.Resource, where, r.ID)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&sandboxName, "sandbox", "", "apply to this sandbox only (removed with it)")
	return cmd
}

func verbPast(a policy.Action) string {
	if a == policy.Allow {
		return "allowed"
	}
	return "denied"
}

func newPolicyLsCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [SANDBOX]",
		Short: "List rules and the default (global, or those applying to one sandbox)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var sb *sandbox.Sandbox
			if len(args) == 1 {
				var err error
				if sb, err = e.getSandbox(args[0]); err != nil {
					return err
				}
			}
			if err := e.ensurePolicyDefault(cmd.Context()); err != nil {
				return err
			}
			out, err := e.manager().Policy(sb)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			fmt.Fprintf(e.stdout, "default: %s (%s)\n", out.Default, presetHelp(policy.Preset(out.Default)))
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 3, ' ', 0)
			if len(out.Rules) == 0 {
				fmt.Fprintln(e.stdout, "no rules; add one with: sbx policy allow network example.com")
			} else {
				fmt.Fprintln(tw, "ID\tACTION\tRESOURCE\tSCOPE\tORIGIN")
				for _, r := range out.Rules {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, r.Action, r.Resource, scopeLabel(r.Scope, r.Sandbox), r.Origin)
				}
			}
			for _, b := range out.Builtin {
				fmt.Fprintf(tw, "built-in\tallow\t%s\tbalanced default\t%s\n", b.Resource, b.Category)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func scopeLabel(scope, name string) string {
	switch {
	case scope == "global" || scope == "":
		return "global"
	case name != "":
		return "sandbox " + name
	}
	return "sandbox " + scope + " (removed)"
}

func newPolicyRmCmd(e *env) *cobra.Command {
	var resource, id, sandboxName string
	cmd := &cobra.Command{
		Use:   "rm network --resource R | --id ID [--sandbox S]",
		Short: "Remove rules by resource (allow and deny) or by id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := networkArg(args); err != nil {
				return err
			}
			if (resource == "") == (id == "") {
				return userErr(nil, "for example: sbx policy rm network --resource example.com", "give exactly one of --resource and --id")
			}
			sb, err := e.optSandbox(sandboxName)
			if err != nil {
				return err
			}
			if err := e.ensurePolicyDefault(cmd.Context()); err != nil {
				return err
			}
			removed, err := e.manager().RemoveRules(lifecycle.RemoveRulesRequest{Resource: resource, ID: id, Sandbox: sb})
			if err != nil {
				return err
			}
			for _, r := range removed {
				fmt.Fprintf(e.stdout, "removed %s\n", r)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&resource, "resource", "", "remove the allow and deny rules for this resource")
	cmd.Flags().StringVar(&id, "id", "", "remove the rule with this id")
	cmd.Flags().StringVar(&sandboxName, "sandbox", "", "the sandbox the rule belongs to")
	return cmd
}

// parseTarget turns `check` input (host, host:port, IP, IP:port, [v6]:port
// or URL) into a request. A missing port is 443 (80 for http:// URLs).
func parseTarget(s string) (policy.Request, error) {
	var req policy.Request
	host, port := s, ""
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || u.Hostname() == "" {
			return req, fmt.Errorf("%q is not a valid URL", s)
		}
		host, port = u.Hostname(), u.Port()
		if port == "" {
			switch u.Scheme {
			case "http", "ws":
				port = "80"
			case "https", "wss":
				port = "443"
			default:
				return req, fmt.Errorf("URL scheme %q has no default port; give one", u.Scheme)
			}
		}
	} else if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		host = a.String()
	} else if h, p, err := net.SplitHostPort(s); err == nil {
		host, port = h, p
	}
	if port == "" {
		port = "443"
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return req, fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	req.Port = uint16(n)
	if a, err := netip.ParseAddr(host); err == nil {
		req.IP = a.Unmap()
		return req, nil
	}
	// Validate the name with the resource grammar.
	r, err := policy.ParseResource(host)
	if err != nil || (r.Kind != policy.KindHost) {
		if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
			req.Host = "localhost"
			return req, nil
		}
		return req, fmt.Errorf("%q is not a host name, IP address or URL", s)
	}
	req.Host = r.Host
	return req, nil
}

// checkJSON is the output of `sbx policy check --json`.
type checkJSON struct {
	Allowed bool         `json:"allowed"`
	Host    string       `json:"host,omitempty"`
	IP      string       `json:"ip,omitempty"`
	Port    uint16       `json:"port"`
	Rule    *policy.Rule `json:"rule,omitempty"`
	Default string       `json:"default"`
	Builtin string       `json:"builtin,omitempty"`
	Reason  string       `json:"reason"`
}

func newPolicyCheckCmd(e *env) *cobra.Command {
	var sandboxName string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check network TARGET",
		Short: "Show whether a destination is allowed, and by which rule",
		Long: `Show whether a destination is allowed, and which rule or default decides.
TARGET is a host, host:port, IP, IP:port, [IPv6]:port or URL; without a port,
443 is assumed. Host names are judged by name only: DNS is not consulted, so
a name that resolves to a private or loopback address may still be denied
when a sandbox connects. Exit status: 0 allowed, 1 denied.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := networkArg(args); err != nil {
				return err
			}
			req, err := parseTarget(args[1])
			if err != nil {
				return userErr(nil, "for example: sbx policy check network https://example.com", "%v", err)
			}
			if req.Sandbox, err = e.sandboxScope(sandboxName); err != nil {
				return err
			}
			if err := e.ensurePolicyDefault(cmd.Context()); err != nil {
				return err
			}
			f, err := e.policyStore().Load()
			if err != nil {
				return policyFileErr(err)
			}
			set, err := policy.Compile(f)
			if err != nil {
				return policyFileErr(&policy.FileError{Path: e.policyStore().Path(), Err: err})
			}
			d := set.Evaluate(req)
			target := req.Host
			if target == "" {
				target = req.IP.String()
			}
			target = net.JoinHostPort(target, strconv.Itoa(int(req.Port)))
			if asJSON {
				j := checkJSON{Allowed: d.Allow, Host: req.Host, Port: req.Port, Rule: d.Rule, Default: string(d.Default), Builtin: d.Builtin, Reason: d.Reason}
				if req.IP.IsValid() {
					j.IP = req.IP.String()
				}
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(j); err != nil {
					return err
				}
			} else {
				verdict := "deny"
				if d.Allow {
					verdict = "allow"
				}
				fmt.Fprintf(e.stdout, "%s %s: %s\n", verdict, target, d.Reason)
				if req.Host != "" {
					fmt.Fprintln(e.stdout, "note: judged by name only; DNS was not consulted")
				}
				if !d.Allow && d.Rule == nil {
					hint := req.Host
					if hint == "" {
						hint = req.IP.String()
					}
					if req.IP.IsValid() && req.IP.IsLoopback() || req.Host == "localhost" {
						hint = fmt.Sprintf("localhost:%d", req.Port)
					}
					fmt.Fprintf(e.stdout, "allow it with: sbx policy allow network %s\n", hint)
				}
			}
			if !d.Allow {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&sandboxName, "sandbox", "", "judge as this sandbox (its rules add to the global ones)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newPolicyLogCmd(e *env) *cobra.Command {
	var asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "log [SANDBOX]",
		Short: "Show allowed and blocked connections, grouped, newest first",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := e.ensurePolicyDefault(cmd.Context()); err != nil {
				return err
			}
			var sbs []*sandbox.Sandbox
			if len(args) == 1 {
				sb, err := e.getSandbox(args[0])
				if err != nil {
					return err
				}
				sbs = []*sandbox.Sandbox{sb}
			}
			rows, err := e.manager().PolicyLog(sbs, limit)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rows); err != nil {
					return err
				}
			} else if len(rows) == 0 {
				fmt.Fprintln(e.stdout, "no network activity recorded")
			} else {
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SANDBOX\tDESTINATION\tPATH\tDECISION\tRULE\tREASON\tLAST SEEN\tCOUNT")
				for _, r := range rows {
					decision := "blocked"
					if r.Allowed {
						decision = "allowed"
					}
					rule := r.Rule
					if rule == "" {
						rule = "-"
					}
					// Every field comes from the audit log, and the host
					// from the guest (a TLS server name, a Host header):
					// escaped, so it cannot reach the terminal as control
					// bytes or forge rows. --json stays JSON.
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", terminalField(r.Sandbox), terminalField(r.Target()),
						terminalField(string(r.Path)), decision, terminalField(rule), terminalField(r.Reason),
						r.LastSeen.Local().Format(time.DateTime), r.Count)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&limit, "limit", 100, "show at most this many rows (0: all)")
	return cmd
}

func newPolicyResetCmd(e *env) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "reset",
		Short: "Remove every rule and forget the chosen default",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			store := e.policyStore()
			if !force {
				if _, isTerm := terminalFd(e.stdin); !isTerm {
					return userErr(nil, "run `sbx policy reset -f` to reset without asking", "reset needs confirmation")
				}
				n := "all"
				if f, err := store.Load(); err == nil {
					n = strconv.Itoa(len(f.Rules))
				}
				fmt.Fprintf(e.stderr, "Remove %s network rules and the chosen default? [y/N]: ", n)
				line, _ := bufio.NewReader(e.stdin).ReadString('\n')
				if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
					return userErr(nil, "", "reset cancelled")
				}
			}
			if err := os.MkdirAll(e.dirs.Config, 0o700); err != nil {
				return userErr(err, "", "cannot create the config folder %s", e.dirs.Config)
			}
			if err := store.Reset(); err != nil {
				return policyFileErr(err)
			}
			fmt.Fprintln(e.stdout, "network policy reset: no rules, no default chosen")
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return cmd
}
