package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newLsCmd(e *env) *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			entries, listErr := e.manager().List()
			switch {
			case asJSON:
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(entries); err != nil {
					return err
				}
			case quiet:
				for _, en := range entries {
					fmt.Fprintln(e.stdout, en.Name)
				}
			default:
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 3, ' ', 0)
				fmt.Fprintln(tw, "SANDBOX\tAGENT\tSTATUS\tMODE\tWORKSPACE\tPORTS")
				for _, en := range entries {
					var ps []string
					for _, p := range en.Ports {
						ps = append(ps, p.String())
					}
					mode := en.Mode
					if en.Share != "" {
						mode += " (" + en.Share + ")"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", en.Name, en.Agent, en.Status, mode, en.Workspace, strings.Join(ps, ", "))
				}
				tw.Flush()
			}
			if listErr != nil {
				fmt.Fprintf(e.stderr, "sbx: some sandboxes could not be read: %v\n", listErr)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return cmd
}
