package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

// lsEntry is one row of `sbx ls --json`.
type lsEntry struct {
	Name       string              `json:"name"`
	ID         string              `json:"id"`
	Agent      string              `json:"agent"`
	Status     sandbox.Status      `json:"status"`
	Reason     string              `json:"reason,omitempty"`
	Workspace  string              `json:"workspace"`
	Workspaces []sandbox.Workspace `json:"workspaces"`
	CPUs       int                 `json:"cpus"`
	MemoryMiB  int                 `json:"memoryMiB"`
	DiskBytes  int64               `json:"diskBytes"`
	Ports      []sandbox.Port      `json:"ports"`
	// Mode is how the workspace is worked on ("direct": the host folder
	// itself); Share how a running sandbox's workspaces reach its VM
	// ("virtiofs" or "9p"), ShareWhy why not virtio-fs.
	Mode     string    `json:"mode"`
	Share    string    `json:"share,omitempty"`
	ShareWhy string    `json:"shareWhy,omitempty"`
	Created  time.Time `json:"created"`
}

func newLsCmd(e *env) *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			all, listErr := e.store.List()
			entries := []lsEntry{}
			for _, sb := range all {
				st, err := e.store.Status(sb)
				if err != nil {
					st = sandbox.State{Status: "unknown", Reason: err.Error()}
				}
				c := sb.Config
				ports, _ := e.store.ReadPorts(sb)
				if ports == nil {
					ports = []sandbox.Port{}
				}
				en := lsEntry{
					Ports: ports, Mode: "direct",
					Name: c.Name, ID: c.ID, Agent: c.Agent, Status: st.Status, Reason: st.Reason,
					Workspace: sb.PrimaryWorkspace(), Workspaces: c.Workspaces,
					CPUs: c.CPUs, MemoryMiB: c.MemoryMiB, DiskBytes: c.DiskBytes, Created: c.Created,
				}
				if c.Clone != nil {
					en.Mode = "clone"
				}
				if st.Status == sandbox.StatusRunning {
					en.Share, en.ShareWhy = st.Share, st.ShareWhy
				}
				entries = append(entries, en)
			}
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
