// Package controlapi is the protocol between the sbx CLI and a sandbox's
// supervisor: HTTP/1.1 with JSON bodies over the unix socket control.sock in
// the sandbox's runtime folder.
//
// Routes (all under /v1):
//
//	GET  /v1/status   Status
//	POST /v1/stop     shut the VM down cleanly; answers when it is down
//	POST /v1/detach   keep the VM running when its last session ends
//	GET  /v1/ports    Ports: the published ports
//	POST /v1/ports    PortRequest: publish or unpublish a port; answers
//	                  with the port bound (or the remaining list)
//	POST /v1/stream   upgrade to a raw byte stream spliced onto a new
//	                  agent-protocol stream (api/agentapi); with
//	                  ?session=1 the stream counts as a session, and a VM
//	                  not started detached stops when its last session ends
//
// Errors are JSON Error bodies with an HTTP status; the client maps them back
// to the sentinels below.
package controlapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// UpgradeProtocol is the Upgrade header value of /v1/stream.
const UpgradeProtocol = "sbx-agent-stream/1"

// Sentinels the client returns for error codes.
var (
	ErrNotReady    = errors.New("sandbox not ready")
	ErrUnavailable = errors.New("supervisor not reachable")
	// ErrNoAnswer says the supervisor took a stream request and did not
	// answer it (frozen or wedged): it is there, but not working.
	ErrNoAnswer = errors.New("the supervisor did not answer")
)

// Error codes carried in Error.Code.
const (
	CodeNotReady = "not-ready"
	CodeInternal = "internal"
)

// Phase is one named boot step and how long it took.
type Phase struct {
	Name       string `json:"name"`
	DurationMS int64  `json:"durationMs"`
}

// State is where a supervisor's VM is in its life. The store's
// sandbox.Status is what `sbx ls` shows: it adds stopped and crashed,
// which no live supervisor reports.
type State string

// States.
const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StateStopping State = "stopping"
	StateFailed   State = "failed"
)

// Status is the supervisor's view of its sandbox.
type Status struct {
	ID     string  `json:"id"`
	Name   string  `json:"name"`
	State  State   `json:"state"`
	Error  string  `json:"error,omitempty"`
	Phase  string  `json:"phase,omitempty"`
	Phases []Phase `json:"phases,omitempty"`
	// Notes are warnings about this start for the command that started
	// it (a snapshot start that fell back to a cold boot).
	Notes         []string `json:"notes,omitempty"`
	Detached      bool     `json:"detached"`
	Sessions      int      `json:"sessions"`
	Accel         string   `json:"accel,omitempty"`
	KernelRelease string   `json:"kernelRelease,omitempty"`
	BootID        string   `json:"bootId,omitempty"`
	VMMPID        int      `json:"vmmPid,omitempty"`
	// Share is how this boot's workspaces reach the guest ("virtiofs" or
	// "9p"), ShareWhy why when it is not virtio-fs.
	Share    string `json:"share,omitempty"`
	ShareWhy string `json:"shareWhy,omitempty"`
}

// Port is a published port.
type Port struct {
	HostIP      string `json:"hostIP"`
	HostPort    uint16 `json:"hostPort"`
	SandboxPort uint16 `json:"sandboxPort"`
}

// Ports lists published ports.
type Ports struct {
	Ports []Port `json:"ports"`
}

// PortRequest publishes (or with Unpublish, removes) a port.
type PortRequest struct {
	Port      Port `json:"port"`
	Unpublish bool `json:"unpublish,omitempty"`
}

// Error is the body of a failed request.
type Error struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// Client talks to one supervisor.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the supervisor listening on socket.
func NewClient(socket string) *Client {
	c := &Client{socket: socket}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
	return c
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://sbx/v1/"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

func decodeError(resp *http.Response) error {
	var e Error
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(body, &e) != nil || e.Error == "" {
		e.Error = fmt.Sprintf("supervisor answered %s", resp.Status)
	}
	if e.Code == CodeNotReady {
		return fmt.Errorf("%w: %s", ErrNotReady, e.Error)
	}
	return errors.New(e.Error)
}

// Status returns the supervisor's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "status", &s)
	return s, err
}

// Stop asks for a clean shutdown and returns once the VM is down.
func (c *Client) Stop(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "stop", nil)
}

// Detach marks the VM as detached: it keeps running after its last session.
func (c *Client) Detach(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "detach", nil)
}

// Ports lists the published ports.
func (c *Client) Ports(ctx context.Context) ([]Port, error) {
	var p Ports
	err := c.do(ctx, http.MethodGet, "ports", &p)
	return p.Ports, err
}

// Publish publishes port and returns the port bound; with unpublish it
// removes the matching ports and returns those left.
func (c *Client) Publish(ctx context.Context, port Port, unpublish bool) ([]Port, error) {
	body, _ := json.Marshal(PortRequest{Port: port, Unpublish: unpublish})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://sbx/v1/ports", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	var p Ports
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		return nil, fmt.Errorf("decode ports: %w", err)
	}
	return p.Ports, nil
}

// streamHandshake bounds the wait for the supervisor's answer to a
// stream request.
var streamHandshake = 30 * time.Second

// OpenStream opens a raw stream to the guest agent through the supervisor.
// The caller speaks api/agentapi on it and closes it. With session set, the
// stream counts as a session of the sandbox.
func (c *Client) OpenStream(ctx context.Context, session bool) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	path := "/v1/stream"
	if session {
		path += "?session=1"
	}
	req := "POST " + path + " HTTP/1.1\r\nHost: sbx\r\nConnection: Upgrade\r\nUpgrade: " + UpgradeProtocol + "\r\nContent-Length: 0\r\n\r\n"
	// The answer comes at once from a live supervisor; a frozen one
	// (stopped, wedged) must not hold the caller forever, and a cancelled
	// ctx (Ctrl-C) ends the wait (found by the twelfth review: the read
	// ignored both).
	dl := time.Now().Add(streamHandshake)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	fail := func(err error) (net.Conn, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("%w within %s", ErrNoAnswer, streamHandshake)
		}
		return nil, fmt.Errorf("open stream: %w", err)
	}
	if _, err := io.WriteString(conn, req); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fail(err)
	}
	if !stop() {
		conn.Close()
		return nil, ctx.Err()
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, decodeError(resp)
	}
	conn.SetDeadline(time.Time{})
	return &bufferedConn{Conn: conn, r: br}, nil
}

// bufferedConn reads through the bufio.Reader that parsed the HTTP response,
// so bytes the server sent right after it are not lost.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the stream when the underlying conn supports it.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// WriteError writes e as a JSON error response with status.
func WriteError(w http.ResponseWriter, status int, e Error) {
	var buf bytes.Buffer
	_ = json.NewEncoder(&buf).Encode(e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
