package cli

import (
	"context"
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newRmCmd(e *env) *cobra.Command {
	var force, all bool
	cmd := &cobra.Command{
		Use:     "rm [-f] [--all] SANDBOX...",
		Aliases: []string{"remove"},
		Short:   "Remove sandboxes: their VM and disk, never their workspace",
		Long: `Remove each SANDBOX: its VM state, disk and logs. Workspace folders are never
touched. A running sandbox is refused unless -f is given, which stops it first.
A sandbox whose files are damaged (` + "`sbx ls`" + ` warns of it) can still be removed:
by name with -f when its state file is damaged, by its folder's id (which
` + "`sbx ls`" + ` names in its warning) when its config is; ` + "`sbx rm -f --all`" + ` removes those too.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var targets []*sandbox.Sandbox
			var errs []error
			if all {
				if len(args) > 0 {
					return userErr(nil, "", "give either --all or names, not both")
				}
				targets, _ = e.store.List()
				if force {
					// Folders whose config is damaged go too.
					targets = append(targets, e.manager().Damaged()...)
				}
			} else {
				if len(args) == 0 {
					return userErr(nil, "see `sbx rm --help`", "name at least one sandbox, or give --all")
				}
				for _, n := range args {
					sb, err := e.getSandbox(n)
					if err != nil {
						// A damaged sandbox is named by its folder.
						if i := slices.IndexFunc(e.manager().Damaged(), func(d *sandbox.Sandbox) bool { return d.Config.ID == n }); i >= 0 {
							sb, err = e.manager().Damaged()[i], nil
						}
					}
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

// removeSandbox deletes sb (lifecycle.Manager.Remove); a running
// sandbox needs force, which stops it.
func (e *env) removeSandbox(ctx context.Context, sb *sandbox.Sandbox, force bool) error {
	return e.manager().Remove(ctx, sb, lifecycle.RemoveRequest{Force: force})
}
