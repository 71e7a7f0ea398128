package cli

import (
	"encoding/json"
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/api/agentapi"
)

func newVersionCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the sbx version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			v := map[string]any{
				"version":       Version,
				"go":            runtime.Version(),
				"platform":      runtime.GOOS + "/" + runtime.GOARCH,
				"agentProtocol": agentapi.ProtocolVersion,
			}
			if asJSON {
				return json.NewEncoder(e.stdout).Encode(v)
			}
			fmt.Fprintf(e.stdout, "sbx %s (%s, %s, agent protocol %d)\n", Version, runtime.Version(), v["platform"], agentapi.ProtocolVersion)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
