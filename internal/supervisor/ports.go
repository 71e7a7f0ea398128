package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// publisher forwards host TCP ports into the guest through the netstack.
type publisher struct {
	s *Supervisor

	mu    sync.Mutex
	ports map[sandbox.Port]net.Listener // guarded by mu; keyed by the bound port
	wg    sync.WaitGroup
}

func newPublisher(s *Supervisor) *publisher {
	return &publisher{s: s, ports: map[sandbox.Port]net.Listener{}}
}

// restore publishes the ports recorded in ports.json; a port that cannot
// be bound any more is logged and dropped from the list. A ports.json
// that cannot be read or parsed is left as it is (never overwritten with
// the empty list) and reported in the log and as a note for the starting
// command, with the way to recover. The lifecycle refuses to start a
// sandbox whose file is damaged; this covers one damaged since.
func (p *publisher) restore(ctx context.Context) {
	saved, err := p.s.store.ReadPorts(p.s.sb)
	if err != nil {
		name, path := p.s.sb.Config.Name, p.s.sb.Path(sandbox.PortsFile)
		p.s.log.Error("read published ports; none is published", "component", "supervisor", "path", path, "err", err)
		p.s.addNote(fmt.Sprintf("no port is published: %v; fix or delete %s, then publish the ports again with `sbx ports %s --publish [[HOST_IP:]HOST_PORT:]SANDBOX_PORT`", err, path, name))
		return
	}
	for _, port := range saved {
		if _, err := p.publish(ctx, port); err != nil {
			p.s.log.Error("publish port", "port", port.String(), "err", err)
		}
	}
	p.save()
}

// publish binds port on the host and forwards connections to the guest. It
// returns the port actually bound (a free one when HostPort is 0).
func (p *publisher) publish(ctx context.Context, port sandbox.Port) (sandbox.Port, error) {
	p.mu.Lock()
	for bound := range p.ports {
		if sandbox.SamePort(bound, port) {
			p.mu.Unlock()
			if bound.SandboxPort == port.SandboxPort {
				return bound, nil
			}
			return port, fmt.Errorf("%s:%d is already published to sandbox port %d", bound.HostIP, bound.HostPort, bound.SandboxPort)
		}
	}
	p.mu.Unlock()
	ln, err := net.Listen("tcp", net.JoinHostPort(port.HostIP, strconv.Itoa(int(port.HostPort))))
	if err != nil {
		return port, fmt.Errorf("listen on %s:%d: %w", port.HostIP, port.HostPort, err)
	}
	port.HostPort = uint16(ln.Addr().(*net.TCPAddr).Port)
	p.mu.Lock()
	p.ports[port] = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.serve(ctx, ln, port)
	}()
	p.s.log.Info("published port", "component", "supervisor", "port", port.String())
	return port, nil
}

func (p *publisher) serve(ctx context.Context, ln net.Listener, port sandbox.Port) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			guest, err := p.s.net.stack.DialGuest(ctx, port.SandboxPort)
			if err != nil {
				p.s.log.Debug("published port: guest refused", "port", port.String(), "err", err)
				return
			}
			defer guest.Close()
			pipe(ctx, conn, guest)
		}()
	}
}

// unpublish closes every published port that matches spec.
func (p *publisher) unpublish(spec sandbox.Port) []sandbox.Port {
	p.mu.Lock()
	var gone []sandbox.Port
	for bound, ln := range p.ports {
		if sandbox.SamePort(bound, spec) && (spec.HostPort != 0 || bound.SandboxPort == spec.SandboxPort) {
			ln.Close()
			delete(p.ports, bound)
			gone = append(gone, bound)
		}
	}
	p.mu.Unlock()
	p.save()
	return gone
}

func (p *publisher) list() []sandbox.Port {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]sandbox.Port, 0, len(p.ports))
	for port := range p.ports {
		out = append(out, port)
	}
	slices.SortFunc(out, func(a, b sandbox.Port) int { return int(a.HostPort) - int(b.HostPort) })
	return out
}

func (p *publisher) save() {
	if err := p.s.store.WritePorts(p.s.sb, p.list()); err != nil {
		p.s.log.Error("record published ports", "err", err)
	}
}

// close stops every listener and waits for the forwarders.
func (p *publisher) close() {
	p.mu.Lock()
	for _, ln := range p.ports {
		ln.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (s *Supervisor) handlePorts(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(controlapi.Ports{Ports: toAPIPorts(s.ports.list())})
}

func (s *Supervisor) handlePublish(w http.ResponseWriter, r *http.Request) {
	var req controlapi.PortRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		controlapi.WriteError(w, http.StatusBadRequest, controlapi.Error{Error: "bad request: " + err.Error()})
		return
	}
	port := fromAPIPort(req.Port)
	s.mu.Lock()
	ctx, running := s.baseCtx, s.state == controlapi.StateRunning
	s.mu.Unlock()
	if !running {
		controlapi.WriteError(w, http.StatusServiceUnavailable, controlapi.Error{Error: "sandbox is not running", Code: controlapi.CodeNotReady})
		return
	}
	if req.Unpublish {
		if gone := s.ports.unpublish(port); len(gone) == 0 {
			controlapi.WriteError(w, http.StatusNotFound, controlapi.Error{Error: "no published port matches " + port.String()})
			return
		}
		s.handlePorts(w, r)
		return
	}
	bound, err := s.ports.publish(ctx, port)
	if err != nil {
		controlapi.WriteError(w, http.StatusConflict, controlapi.Error{Error: err.Error()})
		return
	}
	s.ports.save()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(controlapi.Ports{Ports: toAPIPorts([]sandbox.Port{bound})})
}

func toAPIPorts(ps []sandbox.Port) []controlapi.Port {
	out := make([]controlapi.Port, 0, len(ps))
	for _, p := range ps {
		out = append(out, controlapi.Port{HostIP: p.HostIP, HostPort: p.HostPort, SandboxPort: p.SandboxPort})
	}
	return out
}

func fromAPIPort(p controlapi.Port) sandbox.Port {
	return sandbox.Port{HostIP: p.HostIP, HostPort: p.HostPort, SandboxPort: p.SandboxPort}
}
