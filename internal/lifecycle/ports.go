package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"

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
	ports, err := m.readPorts(sb)
	if err != nil {
		return nil, err
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

// readPorts is sb's ports.json, checked. A file that cannot be read is
// Internal; one that does not parse or holds a port no start can publish
// (a sandbox port of 0, a host address that is no IP address) is Invalid
// on "ports", naming the file, every problem and how to recover: the
// file is left as it is, never read as "no ports".
func (m *Manager) readPorts(sb *sandbox.Sandbox) ([]sandbox.Port, error) {
	name, path := sb.Config.Name, sb.Path(sandbox.PortsFile)
	ports, err := m.Store.ReadPorts(sb)
	if _, ok := errors.AsType[*fs.PathError](err); ok {
		return nil, newErr(Internal, name, err, "check the permissions of "+path, "cannot read the ports of %s: %v", name, err)
	}
	if err == nil {
		if err = checkPorts(ports); err != nil {
			err = fmt.Errorf("%s: %w", path, err)
		}
	}
	if err != nil {
		e := newErr(Invalid, name, err,
			fmt.Sprintf("fix or delete %s, then publish the ports again with `sbx ports %s --publish [[HOST_IP:]HOST_PORT:]SANDBOX_PORT`", path, name),
			"the ports file of sandbox %s is damaged: %v", name, err)
		e.Field = "ports"
		return nil, e
	}
	return ports, nil
}

// checkPorts returns every port of ports that cannot be published, each
// named by its place in the file and its value.
func checkPorts(ports []sandbox.Port) error {
	var bad []string
	for i, p := range ports {
		if p.SandboxPort == 0 {
			bad = append(bad, fmt.Sprintf("ports[%d]: sandboxPort 0 is not a port number (1-65535)", i))
		}
		if _, err := netip.ParseAddr(p.HostIP); err != nil {
			bad = append(bad, fmt.Sprintf("ports[%d]: hostIP %q is not an IP address", i, p.HostIP))
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}
