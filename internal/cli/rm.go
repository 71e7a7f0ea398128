package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/template"
)

func newRmCmd(e *env) *cobra.Command {
	var force, all bool
	cmd := &cobra.Command{
		Use:     "rm [-f] [--all] SANDBOX...",
		Aliases: []string{"remove"},
		Short:   "Remove sandboxes: their VM and disk, never their workspace",
		Long: `Remove each SANDBOX: its VM state, disk and logs. Workspace folders are never
touched. A running sandbox is refused unless -f is given, which stops it first.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var targets []*sandbox.Sandbox
			var errs []error
			if all {
				if len(args) > 0 {
					return userErr(nil, "", "give either --all or names, not both")
				}
				targets, _ = e.store.List()
			} else {
				if len(args) == 0 {
					return userErr(nil, "see `sbx rm --help`", "name at least one sandbox, or give --all")
				}
				for _, n := range args {
					sb, err := e.getSandbox(n)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					targets = append(targets, sb)
				}
			}
			for _, sb := range targets {
				if err := e.removeSandbox(cmd.Context(), sb, force); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(e.stdout, sb.Config.Name)
			}
			return joinUserErrs(errs)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop running sandboxes first")
	cmd.Flags().BoolVar(&all, "all", false, "remove every sandbox")
	return cmd
}

// removeSandbox deletes sb; a running sandbox needs force, which stops it.
func (e *env) removeSandbox(ctx context.Context, sb *sandbox.Sandbox, force bool) error {
	unlock, err := e.lockSandbox(sb)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := e.store.Status(sb)
	if err != nil {
		return err
	}
	switch st.Status {
	case sandbox.StatusStopped, sandbox.StatusCrashed:
	default:
		if !force {
			return userErr(nil, "stop it with `sbx stop "+sb.Config.Name+"` or use `sbx rm -f`", "sandbox %s is %s", sb.Config.Name, st.Status)
		}
		if err := e.stopLocked(ctx, sb); err != nil {
			return err
		}
	}
	if err := e.store.Remove(sb); err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		return userErr(err, "", "cannot remove sandbox %s", sb.Config.Name)
	}
	e.releaseLeases(sb.Config)
	e.forgetClone(ctx, sb.Config)
	// Sandbox-scoped secrets and rules are keyed by the sandbox id and go
	// with it.
	if _, err := e.secretStore().RemoveSandbox(sb.Config.ID); err != nil {
		return userErr(err, "remove them with `sbx secret rm --sandbox`", "sandbox %s removed, but its secrets could not be", sb.Config.Name)
	}
	if _, err := policy.NewStore(e.dirs.Config).RemoveSandbox(sb.Config.ID); err != nil {
		return userErr(err, "remove them with `sbx policy rm network --id ID`", "sandbox %s removed, but its policy rules could not be", sb.Config.Name)
	}
	// A template image that only this sandbox still held (its template
	// was rebuilt or replaced since) goes now.
	if _, err := template.Collect(ctx, e.dirs.Cache); err != nil {
		e.log.Debug("collect template images", "err", err)
	}
	// After the images: a snapshot whose image just went goes too.
	if _, err := snapshot.Collect(e.dirs.Cache); err != nil {
		e.log.Debug("collect snapshots", "err", err)
	}
	return nil
}
