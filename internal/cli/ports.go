package cli

import (
	"encoding/json"
	"fmt"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newPortsCmd(e *env) *cobra.Command {
	var publish, unpublish []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ports SANDBOX [--publish SPEC]... [--unpublish SPEC]... [--json]",
		Short: "List, publish and unpublish a sandbox's ports on the host",
		Long: `Publish TCP ports of a sandbox on the host: SPEC is
[[HOST_IP:]HOST_PORT:]SANDBOX_PORT. HOST_IP defaults to 127.0.0.1 (use
0.0.0.0 to listen on every address); an omitted HOST_PORT picks a free one,
which is then kept. Connections go from the host into the sandbox only:
publishing opens no way out of it. On a running sandbox the change is
immediate; on a stopped one it applies at the next start. Without flags,
list the published ports.`,
		Example: `  sbx ports shell-proj --publish 8080:80
  sbx ports shell-proj --publish 3000        # a free host port on 127.0.0.1
  sbx ports shell-proj --unpublish 8080:80
  sbx ports shell-proj --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := e.getSandbox(args[0])
			if err != nil {
				return err
			}
			var pub, unpub []sandbox.Port
			for _, s := range publish {
				p, err := sandbox.ParsePort(s)
				if err != nil {
					return userErr(nil, "", "--publish: %v", err)
				}
				pub = append(pub, p)
			}
			for _, s := range unpublish {
				p, err := sandbox.ParsePort(s)
				if err != nil {
					return userErr(nil, "", "--unpublish: %v", err)
				}
				unpub = append(unpub, p)
			}
			ports, err := e.changePorts(cmd, sb, pub, unpub)
			if err != nil {
				return err
			}
			if asJSON {
				if ports == nil {
					ports = []sandbox.Port{}
				}
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(ports)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "HOST\tSANDBOX PORT")
			for _, p := range ports {
				ip := p.HostIP
				if len(ip) > 0 && slices.Contains([]byte(ip), ':') {
					ip = "[" + ip + "]"
				}
				fmt.Fprintf(tw, "%s:%d\t%d\n", ip, p.HostPort, p.SandboxPort)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringArrayVar(&publish, "publish", nil, "publish [[HOST_IP:]HOST_PORT:]SANDBOX_PORT (repeatable)")
	cmd.Flags().StringArrayVar(&unpublish, "unpublish", nil, "remove a published port (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// changePorts applies publish and unpublish requests to sb
// (lifecycle.Manager.Ports) and returns the ports now published.
func (e *env) changePorts(cmd *cobra.Command, sb *sandbox.Sandbox, pub, unpub []sandbox.Port) ([]sandbox.Port, error) {
	return e.manager().Ports(cmd.Context(), sb, lifecycle.PortsRequest{Publish: pub, Unpublish: unpub})
}
