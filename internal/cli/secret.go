package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/secrets"
)

// keyringProbeTimeout bounds the check that the Secret Service answers.
const keyringProbeTimeout = 3 * time.Second

// maxSecretBytes bounds a value read from stdin.
const maxSecretBytes = 64 << 10

func newSecretCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Give sandboxes API keys and tokens without letting them hold them",
		Long: `Secrets stay on the host. Inside a sandbox the agent sees a stand-in
(ANTHROPIC_API_KEY=proxy-managed, or a random placeholder for a custom
secret); the sandbox's proxy puts the real value on the wire, only in
requests to the hosts the secret belongs to. A placeholder sent anywhere else
goes out unchanged and is logged as a possible exfiltration attempt.

Built-in services: ` + strings.Join(secrets.ProviderNames(), ", ") + `.
Secrets are global, or scoped to one sandbox with --sandbox (that one wins,
and is removed with the sandbox). Changes reach running sandboxes at once.
Values live in the Secret Service (D-Bus) when one answers, else in a
0600 file in the config folder (always the file when SBX_HOME is set).`,
	}
	cmd.AddCommand(
		newSecretSetCmd(e),
		newSecretSetCustomCmd(e),
		newSecretLsCmd(e),
		newSecretRmCmd(e),
		newSecretImportCmd(e),
	)
	return cmd
}

// secretStore opens the secrets store the way every sbx process must (the
// CLI and `sbx supervise`): the file store when SBX_HOME is set (tests
// never touch a user's keyring) or no Secret Service answers on the session
// bus, else the Secret Service with the index file next to the policy.
func (e *env) secretStore() *secrets.Store {
	st, _ := e.openSecretStore()
	return st
}

// openSecretStore is secretStore that also says why the file store was
// chosen ("" with the Secret Service).
func (e *env) openSecretStore() (*secrets.Store, string) {
	file := func(why string) (*secrets.Store, string) {
		return secrets.NewStore(secrets.Options{Dir: e.dirs.Config}), why
	}
	if paths.Getenv("SBX_HOME") != "" {
		return file("SBX_HOME is set")
	}
	// Not an sbx knob: the session bus address every D-Bus client reads.
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") == "" {
		return file("no D-Bus session bus")
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyringProbeTimeout)
	defer cancel()
	if err := secrets.ProbeKeyring(ctx); err != nil {
		if e.log != nil {
			e.log.Debug("secret service probe", "err", err)
		}
		return file("the Secret Service does not answer on the session bus")
	}
	return secrets.NewStore(secrets.Options{Dir: e.dirs.Config, Keyring: secrets.SystemKeyring()}), ""
}

// writableSecretStore opens the store for a command that stores values and
// prints the one-line notice when they go to the file.
func (e *env) writableSecretStore() *secrets.Store {
	st, why := e.openSecretStore()
	if why != "" {
		fmt.Fprintf(e.stderr, "sbx: secrets are kept in %s (mode 0600) because %s\n", st.Path(), why)
	}
	return st
}

// secretErr turns a store error into a UserError.
func secretErr(err error, what string) error {
	switch {
	case errors.Is(err, secrets.ErrUnknownService):
		return userErr(err, "built-in services: "+strings.Join(secrets.ProviderNames(), ", ")+"; for anything else use `sbx secret set-custom`", "%v", err)
	case errors.Is(err, secrets.ErrInvalid):
		return userErr(err, "", "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	case errors.Is(err, secrets.ErrKeyringUnavailable):
		return userErr(err, "run sbx where the Secret Service answers (a desktop session), or set the secret again here to keep it in the file", "%s: %v", what, err)
	}
	// The store's errors name files, offsets and OS errors, never a value
	// (keyring errors are scrubbed, JSON errors reduced to an offset).
	return userErr(err, storeHint(err), "%s: %s", what, strings.ReplaceAll(err.Error(), "\n", "; "))
}

// storeHint says what to do about a store error that is not the user's
// input: a damaged index, a full, read-only or foreign folder.
func storeHint(err error) string {
	path := ""
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		path = pe.Path
	} else if le, ok := errors.AsType[*os.LinkError](err); ok {
		path = le.New
	}
	dir := filepath.Dir(path)
	switch {
	case errors.Is(err, secrets.ErrDamaged):
		return fmt.Sprintf("repair %s by hand at that place (it is JSON; with the file store it holds the values, so do not share it), "+
			"or move it away (mv %s %s.damaged): sbx then starts with no secrets and each must be set again "+
			"(the values stay in the moved file, or in the Secret Service, but sbx no longer uses them)", path, path, path)
	case path == "":
		return ""
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Sprintf("the disk (or your quota) holding %s is full: free some space (see df -h %s) and try again", dir, dir)
	case errors.Is(err, syscall.EROFS):
		return fmt.Sprintf("%s is on a read-only file system: remount it read-write, or set SBX_HOME to a writable folder", dir)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Sprintf("you cannot write %s: it must be yours and writable by you (ls -ld %s; chown or chmod u+rwx it)", dir, dir)
	}
	return ""
}

// scopeFlags are -g/--global and --sandbox.
type scopeFlags struct {
	global  bool
	sandbox string
}

func (s *scopeFlags) add(cmd *cobra.Command, what string) {
	cmd.Flags().BoolVarP(&s.global, "global", "g", false, what+" for all sandboxes (the default)")
	cmd.Flags().StringVar(&s.sandbox, "sandbox", "", what+" for this sandbox only (removed with it)")
}

// resolve returns the scope key ("" global, else the sandbox id) and a
// description for messages.
func (s *scopeFlags) resolve(e *env) (string, string, error) {
	if s.global && s.sandbox != "" {
		return "", "", userErr(nil, "give one of them", "-g/--global and --sandbox exclude each other")
	}
	if s.sandbox == "" {
		return "", "all sandboxes", nil
	}
	id, err := e.sandboxScope(s.sandbox)
	if err != nil {
		return "", "", err
	}
	return id, "sandbox " + s.sandbox, nil
}

// readSecret returns the value from the flag, else asks without echo on a
// terminal, else reads stdin.
func (e *env) readSecret(flagValue, prompt string) (secrets.Secret, error) {
	if flagValue != "" {
		return secrets.New(flagValue), nil
	}
	if fd, isTerm := terminalFd(e.stdin); isTerm {
		fmt.Fprint(e.stderr, prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(e.stderr)
		if err != nil {
			return secrets.Secret{}, userErr(err, "", "cannot read the value from the terminal")
		}
		return secrets.New(strings.TrimSpace(string(b))), nil
	}
	b, err := io.ReadAll(io.LimitReader(e.stdin, maxSecretBytes+1))
	if err != nil {
		return secrets.Secret{}, userErr(err, "", "cannot read the value from stdin")
	}
	if len(b) > maxSecretBytes {
		return secrets.Secret{}, userErr(nil, "", "the value on stdin is over %d KiB", maxSecretBytes>>10)
	}
	v := secrets.New(strings.TrimSpace(string(b)))
	if v.IsZero() {
		return v, userErr(nil, "pipe it in (printf %s \"$TOKEN\" | sbx secret set ...) or give -t", "no value on stdin")
	}
	return v, nil
}

func storedWhere(st *secrets.Store) string {
	if st.UsesKeyring() {
		return "in the Secret Service"
	}
	return "in " + st.Path()
}

func newSecretSetCmd(e *env) *cobra.Command {
	var scope scopeFlags
	var token string
	cmd := &cobra.Command{
		Use:   "set SERVICE [-t TOKEN]",
		Short: "Store the key or token of a built-in service",
		Long: `Store the key or token of a built-in service. Without -t the value is asked
for without echo on a terminal, or read from stdin (-t puts it in your shell
history). Built-in services: ` + strings.Join(secrets.ProviderNames(), ", ") + `.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: secrets.ProviderNames(),
		RunE: func(_ *cobra.Command, args []string) error {
			name := strings.ToLower(args[0])
			if _, ok := secrets.LookupProvider(name); !ok {
				return secretErr(fmt.Errorf("%w %q", secrets.ErrUnknownService, args[0]), "")
			}
			key, where, err := scope.resolve(e)
			if err != nil {
				return err
			}
			val, err := e.readSecret(token, "Value for "+name+": ")
			if err != nil {
				return err
			}
			st := e.writableSecretStore()
			ent, err := st.Set(name, key, val)
			if err != nil {
				return secretErr(err, "cannot store the secret")
			}
			fmt.Fprintf(e.stdout, "secret %s set for %s (%s); sandboxes see %s\n", name, where, storedWhere(st), strings.Join(ent.GuestEnv(), " "))
			return nil
		},
	}
	scope.add(cmd, "set it")
	cmd.Flags().StringVarP(&token, "token", "t", "", "the value (prefer the prompt or stdin)")
	return cmd
}

func newSecretSetCustomCmd(e *env) *cobra.Command {
	var scope scopeFlags
	var hosts []string
	var envVar, value string
	cmd := &cobra.Command{
		Use:   "set-custom --host HOST [--host HOST...] --env VAR [--value V] [--sandbox S]",
		Short: "Store any secret: the guest gets a placeholder in VAR, replaced on the wire to HOSTs",
		Long: `Store a secret for a service that is not built in. The guest gets VAR set to a
random placeholder (sbx-ph-...); the proxy replaces the placeholder with the
value in HTTPS requests to one of the hosts on port 443 (or a port an allow
rule names with the host): header values (also inside Basic credentials) and
request bodies up to 1 MiB (larger bodies go unchanged), never the URL.
Answers from those hosts have the value put back to the placeholder, so an
endpoint that echoes what it got hands the guest nothing. The placeholder
sent to any other host goes out unchanged and is logged; a request carrying
the real value to any other host, or in plain HTTP, is blocked (403).
Without --value the value is asked for on a terminal or read from stdin.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			key, where, err := scope.resolve(e)
			if err != nil {
				return err
			}
			if envVar == "" || len(hosts) == 0 {
				return userErr(nil, "for example: sbx secret set-custom --host api.example.com --env EXAMPLE_TOKEN", "--env and at least one --host are needed")
			}
			val, err := e.readSecret(value, "Value for "+envVar+": ")
			if err != nil {
				return err
			}
			st := e.writableSecretStore()
			ent, err := st.SetCustom(secrets.Custom{Env: envVar, Hosts: hosts, Scope: key}, val)
			if err != nil {
				return secretErr(err, "cannot store the secret")
			}
			fmt.Fprintf(e.stdout, "secret %s set for %s (%s); sandboxes see %s=%s; the value goes only to %s\n",
				ent.Name, where, storedWhere(st), ent.Name, ent.Placeholder, strings.Join(ent.Hosts, ", "))
			return nil
		},
	}
	scope.add(cmd, "set it")
	cmd.Flags().StringArrayVar(&hosts, "host", nil, "a host the value may be sent to (repeat for more)")
	cmd.Flags().StringVar(&envVar, "env", "", "the environment variable the guest gets the placeholder in")
	cmd.Flags().StringVar(&value, "value", "", "the value (prefer the prompt or stdin)")
	return cmd
}

// secretJSON is one secret in `sbx secret ls --json`. It never holds a value.
type secretJSON struct {
	Service     string    `json:"service"`
	Custom      bool      `json:"custom,omitempty"`
	Scope       string    `json:"scope"` // global or sandbox
	Sandbox     string    `json:"sandbox,omitempty"`
	SandboxID   string    `json:"sandboxId,omitempty"`
	SetAt       time.Time `json:"setAt"`
	Hosts       []string  `json:"hosts"`
	Env         []string  `json:"env"`
	Placeholder string    `json:"placeholder,omitempty"`
	Store       string    `json:"store"` // keyring or file
}

func newSecretLsCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List stored secrets (service, scope, when set; never the value)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			// Listing reads only the index: no Secret Service probe needed.
			st := secrets.NewStore(secrets.Options{Dir: e.dirs.Config})
			ents, err := st.List()
			if err != nil {
				return secretErr(err, "cannot read the secrets index")
			}
			names := e.sandboxNames()
			rows := make([]secretJSON, 0, len(ents))
			for _, en := range ents {
				if why := secrets.ReservedEnv(en.Name); en.Custom && why != "" {
					rm := "sbx secret rm -f " + en.Name
					if !en.Global() {
						rm += " --sandbox " + cmp.Or(names[en.Scope], en.Scope)
					}
					fmt.Fprintf(e.stderr, "sbx: warning: custom secret %s is not given to sandboxes: the variable is reserved (%s); remove it with `%s` and set it under another name\n", en.Name, why, rm)
				}
				r := secretJSON{Service: en.Name, Custom: en.Custom, Scope: "global", SetAt: en.SetAt,
					Hosts: en.BoundHosts(), Env: envNames(en.GuestEnv()), Store: "file"}
				if en.Custom {
					r.Placeholder = en.Placeholder
				}
				if en.InKeyring {
					r.Store = "keyring"
				}
				if !en.Global() {
					r.Scope, r.SandboxID, r.Sandbox = "sandbox", en.Scope, names[en.Scope]
				}
				rows = append(rows, r)
			}
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			if len(rows) == 0 {
				fmt.Fprintln(e.stdout, "no secrets; add one with `sbx secret set SERVICE` or `sbx secret import --all`")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tSCOPE\tSET\tGUEST SEES\tHOSTS")
			for _, r := range rows {
				scope := "global"
				if r.Scope == "sandbox" {
					scope = r.Sandbox
					if scope == "" {
						scope = r.SandboxID + " (removed)"
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Service, scope, r.SetAt.Local().Format("2006-01-02 15:04"),
					strings.Join(r.Env, ","), strings.Join(r.Hosts, ","))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// envNames keeps the names of VAR=VALUE lines.
func envNames(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		out = append(out, k)
	}
	return out
}

func newSecretRmCmd(e *env) *cobra.Command {
	var scope scopeFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "rm SERVICE|VAR",
		Short: "Remove a secret (a built-in service, or a custom secret's variable)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			key, where, err := scope.resolve(e)
			if err != nil {
				return err
			}
			name := args[0]
			if _, ok := secrets.LookupProvider(strings.ToLower(name)); ok {
				name = strings.ToLower(name)
			}
			if !force {
				if _, isTerm := terminalFd(e.stdin); !isTerm {
					return userErr(nil, fmt.Sprintf("run `sbx secret rm -f %s` to remove it without asking", name), "removing a secret needs confirmation")
				}
				fmt.Fprintf(e.stderr, "Remove secret %s for %s? [y/N]: ", name, where)
				var line string
				fmt.Fscanln(e.stdin, &line)
				if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
					return userErr(nil, "", "removal cancelled")
				}
			}
			_, err = e.secretStore().Remove(name, key)
			if errors.Is(err, secrets.ErrNotFound) {
				if force {
					fmt.Fprintf(e.stdout, "no secret %s for %s\n", name, where)
					return nil
				}
				return userErr(err, "list secrets with `sbx secret ls`", "no secret %s for %s", name, where)
			}
			if errors.Is(err, secrets.ErrKeyringUnavailable) {
				return userErr(err, "remove the item \"sbx\" with a keyring tool (seahorse, secret-tool clear service sbx)", "secret %s removed for %s, but its value stays in the Secret Service, which does not answer here", name, where)
			}
			if err != nil {
				return secretErr(err, "cannot remove the secret")
			}
			fmt.Fprintf(e.stdout, "secret %s removed for %s\n", name, where)
			return nil
		},
	}
	scope.add(cmd, "remove it")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation, and succeed when there is no such secret")
	return cmd
}

// importEnv lists the host variables `secret import` reads for p, in order.
func importEnv(p secrets.Provider) []string {
	return append(append([]string(nil), p.Env...), p.OAuthEnv...)
}

func newSecretImportCmd(e *env) *cobra.Command {
	var scope scopeFlags
	var all bool
	cmd := &cobra.Command{
		Use:   "import [SERVICE|--all]",
		Short: "Store keys from this shell's environment variables (ANTHROPIC_API_KEY, ...)",
		Long: `Store keys and tokens found in this shell's environment: ANTHROPIC_API_KEY (or
CLAUDE_CODE_OAUTH_TOKEN), OPENAI_API_KEY, GH_TOKEN or GITHUB_TOKEN,
GEMINI_API_KEY or GOOGLE_API_KEY, GROQ_API_KEY, MISTRAL_API_KEY,
OPENROUTER_API_KEY, XAI_API_KEY. The first one set wins for each service.`,
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: secrets.ProviderNames(),
		RunE: func(_ *cobra.Command, args []string) error {
			if all == (len(args) == 1) {
				return userErr(nil, "sbx secret import anthropic, or sbx secret import --all", "name one service or give --all")
			}
			key, where, err := scope.resolve(e)
			if err != nil {
				return err
			}
			providers := secrets.Providers
			if !all {
				p, ok := secrets.LookupProvider(strings.ToLower(args[0]))
				if !ok {
					return secretErr(fmt.Errorf("%w %q", secrets.ErrUnknownService, args[0]), "")
				}
				providers = []secrets.Provider{p}
			}
			type found struct {
				p   secrets.Provider
				env string
				val secrets.Secret
			}
			var todo []found
			for _, p := range providers {
				for _, v := range importEnv(p) {
					// Not sbx knobs: the providers' own variables, read on purpose.
					if s := strings.TrimSpace(os.Getenv(v)); s != "" {
						todo = append(todo, found{p, v, secrets.New(s)})
						break
					}
				}
			}
			if len(todo) == 0 {
				var vars []string
				for _, p := range providers {
					vars = append(vars, importEnv(p)...)
				}
				return userErr(nil, "export one of them in this shell, or use `sbx secret set SERVICE`", "none of %s is set", strings.Join(vars, ", "))
			}
			st := e.writableSecretStore()
			var errs []error
			for _, f := range todo {
				if _, err := st.Set(f.p.Name, key, f.val); err != nil {
					errs = append(errs, secretErr(err, "cannot store "+f.p.Name+" from "+f.env))
					continue
				}
				fmt.Fprintf(e.stdout, "secret %s imported from %s for %s (%s)\n", f.p.Name, f.env, where, storedWhere(st))
			}
			return errors.Join(errs...)
		},
	}
	scope.add(cmd, "import")
	cmd.Flags().BoolVar(&all, "all", false, "import every service whose variable is set")
	return cmd
}
