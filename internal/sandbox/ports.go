package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// PortsFile lists the sandbox's published ports.
const PortsFile = "ports.json"

// Port publishes a TCP port of the sandbox on the host.
type Port struct {
	// HostIP is the host address to listen on (127.0.0.1 unless given).
	HostIP string `json:"hostIP"`
	// HostPort is the host port; 0 asks for a free one, and the port
	// actually bound is recorded.
	HostPort uint16 `json:"hostPort"`
	// SandboxPort is the port inside the sandbox.
	SandboxPort uint16 `json:"sandboxPort"`
}

// String renders p as HOST_IP:HOST_PORT:SANDBOX_PORT.
func (p Port) String() string {
	ip, _ := netip.ParseAddr(p.HostIP)
	return netip.AddrPortFrom(ip, p.HostPort).String() + ":" + strconv.Itoa(int(p.SandboxPort))
}

// ParsePort parses [[HOST_IP:]HOST_PORT:]SANDBOX_PORT; an IPv6 HOST_IP is
// written in brackets. HOST_IP defaults to 127.0.0.1 and HOST_PORT to 0
// (a free port).
func ParsePort(spec string) (Port, error) {
	bad := func(why string) (Port, error) {
		return Port{}, fmt.Errorf("port %q: %s (want [[HOST_IP:]HOST_PORT:]SANDBOX_PORT, e.g. 8080:80)", spec, why)
	}
	p := Port{HostIP: "127.0.0.1"}
	rest := spec
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return bad("unclosed [ of an IPv6 address")
		}
		p.HostIP = rest[1:end]
		rest = rest[end+2:]
		if strings.Count(rest, ":") != 1 {
			return bad("after an address, give HOST_PORT:SANDBOX_PORT")
		}
	}
	parts := strings.Split(rest, ":")
	switch len(parts) {
	case 1:
	case 2:
		hp, err := parsePortNum(parts[0], true)
		if err != nil {
			return bad(err.Error())
		}
		p.HostPort = hp
		parts = parts[1:]
	case 3:
		p.HostIP = parts[0]
		hp, err := parsePortNum(parts[1], true)
		if err != nil {
			return bad(err.Error())
		}
		p.HostPort = hp
		parts = parts[2:]
	default:
		return bad("too many ':'")
	}
	sp, err := parsePortNum(parts[0], false)
	if err != nil {
		return bad(err.Error())
	}
	p.SandboxPort = sp
	ip, err := netip.ParseAddr(p.HostIP)
	if err != nil {
		return bad("host address " + strconv.Quote(p.HostIP) + " is not an IP address")
	}
	p.HostIP = ip.String()
	return p, nil
}

func parsePortNum(s string, zeroOK bool) (uint16, error) {
	if s == "" && zeroOK {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || (n == 0 && !zeroOK) {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return uint16(n), nil
}

type portsFile struct {
	Version int    `json:"version"`
	Ports   []Port `json:"ports"`
}

// ReadPorts returns the published ports of sb; none when the file is
// missing.
func (s *Store) ReadPorts(sb *Sandbox) ([]Port, error) {
	data, err := os.ReadFile(sb.Path(PortsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ports of %s: %w", sb.Config.Name, err)
	}
	var f portsFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", sb.Path(PortsFile), err)
	}
	return f.Ports, nil
}

// WritePorts records the published ports of sb atomically.
func (s *Store) WritePorts(sb *Sandbox, ports []Port) error {
	if ports == nil {
		ports = []Port{}
	}
	return writeJSON(sb.Path(PortsFile), portsFile{Version: 1, Ports: ports}, stateFileMode)
}

// SamePort reports whether a and b publish the same host endpoint, or (when
// one leaves the host port to choose) the same sandbox port on the same
// address.
func SamePort(a, b Port) bool {
	if a.HostIP != b.HostIP {
		return false
	}
	if a.HostPort != 0 && b.HostPort != 0 {
		return a.HostPort == b.HostPort
	}
	return a.SandboxPort == b.SandboxPort
}
