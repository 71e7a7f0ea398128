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
					fmt.Fprintln(e.stdout, terminalField(en.Name))
				}
			default:
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 3, ' ', 0)
				fmt.Fprintln(tw, "SANDBOX\tAGENT\tSTATUS\tMODE\tWORKSPACE\tPORTS")
				// Every cell escaped (terminalField): a workspace path may
				// hold a newline or an escape sequence. --json stays exact.
				for _, en := range entries {
					var ps []string
					for _, p := range en.Ports {
						ps = append(ps, p.String())
					}
					mode := en.Mode
					if en.Share != "" {
						mode += " (" + en.Share + ")"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", terminalField(en.Name), terminalField(en.Agent), terminalField(string(en.Status)),
						terminalField(mode), terminalField(en.Workspace), terminalField(strings.Join(ps, ", ")))
				}
				tw.Flush()
			}
			if listErr != nil {
				// The error may quote a folder's name.
				w := &terminalWriter{w: e.stderr}
				fmt.Fprintf(w, "sbx: some sandboxes could not be read: %v\n", listErr)
				w.Flush()
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return cmd
}
