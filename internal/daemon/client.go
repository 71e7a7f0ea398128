package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// Client talks to a daemon.
type Client struct {
	HTTP  *http.Client
	Base  string // "http://sbx" on a unix socket
	Token string
}

// UnixClient is a client of the daemon on the unix socket path.
func UnixClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{HTTP: &http.Client{Transport: tr}, Base: "http://sbx"}
}

// TCPClient is a client of the daemon at addr (host:port) with token.
func TCPClient(addr, token string) *Client {
	return &Client{HTTP: &http.Client{}, Base: "http://" + addr, Token: token}
}

// APIError is an error answer.
type APIError struct {
	Status int
	ErrorMsg
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e struct {
			Error ErrorMsg `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return nil, &APIError{Status: resp.StatusCode, ErrorMsg: e.Error}
	}
	return resp, nil
}

func sandboxPath(name string, rest ...string) string {
	return "/v1/sandboxes/" + url.PathEscape(name) + strings.Join(rest, "")
}

// List lists the sandboxes.
func (c *Client) List(ctx context.Context) ([]lifecycle.Info, error) {
	var out []lifecycle.Info
	return out, c.do(ctx, "GET", "/v1/sandboxes", nil, &out)
}

// Get describes one sandbox.
func (c *Client) Get(ctx context.Context, name string) (lifecycle.Info, error) {
	var out lifecycle.Info
	return out, c.do(ctx, "GET", sandboxPath(name), nil, &out)
}

// Create makes (and unless NoStart, starts) a sandbox.
func (c *Client) Create(ctx context.Context, req CreateRequest) (lifecycle.Info, error) {
	var out lifecycle.Info
	return out, c.do(ctx, "POST", "/v1/sandboxes", req, &out)
}

// Start starts a sandbox.
func (c *Client) Start(ctx context.Context, name string) (lifecycle.Info, error) {
	var out lifecycle.Info
	return out, c.do(ctx, "POST", sandboxPath(name, "/start"), nil, &out)
}

// Stop stops a sandbox.
func (c *Client) Stop(ctx context.Context, name string) (lifecycle.Info, error) {
	var out lifecycle.Info
	return out, c.do(ctx, "POST", sandboxPath(name, "/stop"), nil, &out)
}

// Remove removes a sandbox (force: a running one too).
func (c *Client) Remove(ctx context.Context, name string, force bool) error {
	q := ""
	if force {
		q = "?force=true"
	}
	return c.do(ctx, "DELETE", sandboxPath(name, q), nil, nil)
}

// Ports publishes and unpublishes ports and returns those published.
func (c *Client) Ports(ctx context.Context, name string, req PortsRequest) ([]sandbox.Port, error) {
	var out []sandbox.Port
	method := "POST"
	var body any = req
	if len(req.Publish)+len(req.Unpublish) == 0 {
		method, body = "GET", nil
	}
	return out, c.do(ctx, method, sandboxPath(name, "/ports"), body, &out)
}

// Exec runs a command in a running sandbox, copying its output to stdout
// and stderr as it comes, and returns its exit code.
func (c *Client) Exec(ctx context.Context, name string, req ExecRequest, stdout, stderr io.Writer) (int, error) {
	resp, err := c.send(ctx, "POST", sandboxPath(name, "/exec"), req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	for {
		var fr ExecFrame
		if err := dec.Decode(&fr); err != nil {
			return 0, fmt.Errorf("exec answer ended early: %w", err)
		}
		switch {
		case fr.Error != nil:
			return 0, &APIError{Status: http.StatusOK, ErrorMsg: *fr.Error}
		case fr.Exit != nil:
			return *fr.Exit, nil
		}
		if stdout != nil && len(fr.Stdout) > 0 {
			stdout.Write(fr.Stdout)
		}
		if stderr != nil && len(fr.Stderr) > 0 {
			stderr.Write(fr.Stderr)
		}
	}
}

// Events streams the daemon's lifecycle events until ctx ends.
func (c *Client) Events(ctx context.Context) (<-chan lifecycle.Event, error) {
	resp, err := c.send(ctx, "GET", "/v1/events", nil)
	if err != nil {
		return nil, err
	}
	ch := make(chan lifecycle.Event, 16)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev lifecycle.Event
			if json.Unmarshal([]byte(data), &ev) == nil {
				select {
				case ch <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch, nil
}
