package lifecycle

import (
	"context"
	"slices"

	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// PortsRequest publishes and unpublishes ports of a sandbox.
type PortsRequest struct {
	Publish, Unpublish []sandbox.Port
}

// Ports applies req to sb, through its supervisor when it runs, else to
// ports.json (applied at its next start), and returns the ports now
// published. A host port taken, or an unpublish that matches nothing, is
// a Conflict on "ports".
func (m *Manager) Ports(ctx context.Context, sb *sandbox.Sandbox, req PortsRequest) ([]sandbox.Port, error) {
	pub, unpub := req.Publish, req.Unpublish
	unlock, st, err := m.lockedStatus(ctx, sb)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if st.Status == sandbox.StatusRunning {
		c := supervisor.Client(m.Store, sb)
		for _, p := range unpub {
			if _, err := c.Publish(ctx, toAPIPort(p), true); err != nil {
				return nil, portsErr(sb, "list them with `sbx ports "+sb.Config.Name+"`", "--unpublish %s: %v", p, err)
			}
		}
		for _, p := range pub {
			if _, err := c.Publish(ctx, toAPIPort(p), false); err != nil {
				return nil, portsErr(sb, "pick another host port, or omit it to get a free one", "--publish %s: %v", p, err)
			}
		}
		list, err := c.Ports(ctx)
		if err != nil {
			return nil, newErr(Failed, sb.Config.Name, err, "", "cannot reach sandbox %s", sb.Config.Name)
		}
		var out []sandbox.Port
		for _, p := range list {
			out = append(out, sandbox.Port{HostIP: p.HostIP, HostPort: p.HostPort, SandboxPort: p.SandboxPort})
		}
		return out, nil
	}
	ports, err := m.Store.ReadPorts(sb)
	if err != nil {
		return nil, newErr(Internal, sb.Config.Name, err, "", "cannot read the ports of %s", sb.Config.Name)
	}
	for _, u := range unpub {
		n := len(ports)
		ports = slices.DeleteFunc(ports, func(p sandbox.Port) bool { return sandbox.SamePort(p, u) })
		if len(ports) == n {
			return nil, portsErr(sb, "list them with `sbx ports "+sb.Config.Name+"`", "--unpublish %s: no published port matches", u)
		}
	}
	for _, p := range pub {
		if i := slices.IndexFunc(ports, func(q sandbox.Port) bool { return sandbox.SamePort(p, q) }); i >= 0 {
			if ports[i].SandboxPort != p.SandboxPort {
				return nil, portsErr(sb, "", "--publish %s: host port taken by %s", p, ports[i])
			}
			continue
		}
		ports = append(ports, p)
	}
	if len(pub)+len(unpub) > 0 {
		if err := m.Store.WritePorts(sb, ports); err != nil {
			return nil, newErr(Internal, sb.Config.Name, err, "", "cannot record the ports of %s", sb.Config.Name)
		}
	}
	return ports, nil
}

func toAPIPort(p sandbox.Port) controlapi.Port {
	return controlapi.Port{HostIP: p.HostIP, HostPort: p.HostPort, SandboxPort: p.SandboxPort}
}

func portsErr(sb *sandbox.Sandbox, hint, format string, args ...any) *Error {
	e := newErr(Conflict, sb.Config.Name, nil, hint, format, args...)
	e.Field = "ports"
	return e
}
