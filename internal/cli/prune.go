package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newPruneCmd(e *env) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "prune [--dry-run]",
		Short: "Remove all stopped sandboxes",
		Long:  `Remove every sandbox that is stopped or crashed, printing each name. Workspaces are never touched.`,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, _ := e.store.List()
			var errs []error
			for _, sb := range all {
				st, err := e.store.Status(sb)
				if err != nil || (st.Status != sandbox.StatusStopped && st.Status != sandbox.StatusCrashed) {
					continue
				}
				if dryRun {
					fmt.Fprintf(e.stdout, "would remove %s\n", sb.Config.Name)
					continue
				}
				if err := e.removeSandbox(cmd.Context(), sb, false); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(e.stdout, sb.Config.Name)
			}
			return joinUserErrs(errs)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only show what would be removed")
	return cmd
}
