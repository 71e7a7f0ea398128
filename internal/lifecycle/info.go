package lifecycle

import (
	"fmt"
	"time"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

// Info is what a sandbox is and how it is: one row of `sbx ls --json`
// and of the API's list. The JSON field names are stable.
type Info struct {
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
	// itself; "clone"); Share how a running sandbox's workspaces reach
	// its VM ("virtiofs" or "9p"), ShareWhy why not virtio-fs.
	Mode     string    `json:"mode"`
	Share    string    `json:"share,omitempty"`
	ShareWhy string    `json:"shareWhy,omitempty"`
	Created  time.Time `json:"created"`
	Template string    `json:"template"`
}

// Info describes sb as its state files say now.
func (m *Manager) Info(sb *sandbox.Sandbox) Info {
	st, err := m.Store.Status(sb)
	if err != nil {
		st = sandbox.State{Status: "unknown", Reason: err.Error()}
	}
	c := sb.Config
	ports, _ := m.Store.ReadPorts(sb)
	if ports == nil {
		ports = []sandbox.Port{}
	}
	in := Info{
		Ports: ports, Mode: "direct",
		Name: c.Name, ID: c.ID, Agent: c.Agent, Status: st.Status, Reason: st.Reason,
		Workspace: sb.PrimaryWorkspace(), Workspaces: c.Workspaces,
		CPUs: c.CPUs, MemoryMiB: c.MemoryMiB, DiskBytes: c.DiskBytes, Created: c.Created,
		Template: c.Template.Name,
	}
	if c.Clone != nil {
		in.Mode = "clone"
	}
	if st.Status == sandbox.StatusRunning {
		in.Share, in.ShareWhy = st.Share, st.ShareWhy
	}
	return in
}

// List describes every sandbox of the store; err says which could not be
// read (the others are listed).
func (m *Manager) List() ([]Info, error) {
	all, err := m.Store.List()
	out := []Info{}
	for _, sb := range all {
		out = append(out, m.Info(sb))
	}
	// Folders whose config cannot be read are listed too, by their id,
	// so that whoever lists sees them and can remove them.
	for _, d := range m.Store.Damaged() {
		out = append(out, Info{Name: d.ID, ID: d.ID, Status: "unknown",
			Reason:     fmt.Sprintf("its config cannot be read (%v); remove it with `sbx rm -f %s`", d.Err, d.ID),
			Workspaces: []sandbox.Workspace{}, Ports: []sandbox.Port{}, Mode: "unknown"})
	}
	return out, err
}
