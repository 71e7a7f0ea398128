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
	"strconv"
	"strings"
	"sync"

	"github.com/coder/websocket"

	"github.com/sbx-dev/sbx/internal/audit"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/policy"
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
	ct := ""
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd, ct = bytes.NewReader(data), "application/json"
	}
	return c.sendRaw(ctx, method, path, ct, rd)
}

// sendRaw sends body (of content type ct) as it is.
func (c *Client) sendRaw(ctx context.Context, method, path, ct string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return nil, err
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
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

// Upload writes body into a running sandbox at the absolute path: a tar
// archive (ct "application/x-tar", one top-level entry) or one file's
// bytes (ct "application/octet-stream"; body a *bytes.Reader,
// *strings.Reader or *os.File-like reader with a known length).
func (c *Client) Upload(ctx context.Context, name, path, ct string, body io.Reader) error {
	resp, err := c.sendRaw(ctx, "PUT", sandboxPath(name, "/files?path="+url.QueryEscape(path)), ct, body)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// Download reads path out of a running sandbox: its tar archive, or with
// raw the bytes of the regular file. The archive is the sandbox's own:
// extract it with archive.Extract, never with a tool that follows its
// links. The caller closes the answer.
func (c *Client) Download(ctx context.Context, name, path string, raw bool) (io.ReadCloser, error) {
	q := "/files?path=" + url.QueryEscape(path)
	if raw {
		q += "&format=raw"
	}
	resp, err := c.send(ctx, "GET", sandboxPath(name, q), nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Policy is the network policy (with sandbox, the rules that apply to it).
func (c *Client) Policy(ctx context.Context, sandbox string) (lifecycle.PolicyView, error) {
	var out lifecycle.PolicyView
	return out, c.do(ctx, "GET", "/v1/policy"+query("sandbox", sandbox), nil, &out)
}

// SetDefault chooses the default preset.
func (c *Client) SetDefault(ctx context.Context, preset string) (lifecycle.PolicyView, error) {
	var out lifecycle.PolicyView
	return out, c.do(ctx, "PUT", "/v1/policy/default", PresetRequest{Default: preset}, &out)
}

// AddRules adds network rules.
func (c *Client) AddRules(ctx context.Context, req RulesRequest) (RulesAnswer, error) {
	var out RulesAnswer
	return out, c.do(ctx, "POST", "/v1/policy/rules", req, &out)
}

// RemoveRules removes the rules of resource (or the one with id), global
// or of sandbox, and returns them.
func (c *Client) RemoveRules(ctx context.Context, resource, id, sandbox string) ([]policy.Rule, error) {
	v := url.Values{}
	for k, x := range map[string]string{"resource": resource, "id": id, "sandbox": sandbox} {
		if x != "" {
			v.Set(k, x)
		}
	}
	var out []policy.Rule
	return out, c.do(ctx, "DELETE", "/v1/policy/rules?"+v.Encode(), nil, &out)
}

// PolicyLog is the network decisions (of sandbox, or all), grouped.
func (c *Client) PolicyLog(ctx context.Context, sandbox string, limit int) ([]audit.Row, error) {
	v := url.Values{"limit": {strconv.Itoa(limit)}}
	if sandbox != "" {
		v.Set("sandbox", sandbox)
	}
	var out []audit.Row
	return out, c.do(ctx, "GET", "/v1/policy/log?"+v.Encode(), nil, &out)
}

func query(k, v string) string {
	if v == "" {
		return ""
	}
	return "?" + url.Values{k: {v}}.Encode()
}

// TTYIO connects an interactive exec: Stdin's bytes go to the process
// (then the end of its input), Control's messages too (a resize, a
// signal); output goes to Stdout and Stderr.
type TTYIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Control        <-chan TTYControl
}

// ExecTTY runs an interactive exec over the WebSocket and returns the
// process's exit code.
func (c *Client) ExecTTY(ctx context.Context, name string, req TTYRequest, tio TTYIO) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	u := "ws" + strings.TrimPrefix(c.Base, "http") + sandboxPath(name, "/exec")
	h := http.Header{}
	if c.Token != "" {
		h.Set("Authorization", "Bearer "+c.Token)
	}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.HTTP, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			var e struct {
				Error ErrorMsg `json:"error"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&e)
			return 0, &APIError{Status: resp.StatusCode, ErrorMsg: e.Error}
		}
		return 0, err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(16 << 20)
	first, _ := json.Marshal(req)
	if err := conn.Write(ctx, websocket.MessageText, first); err != nil {
		return 0, err
	}
	var wmu sync.Mutex
	write := func(typ websocket.MessageType, p []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return conn.Write(ctx, typ, p)
	}
	if tio.Stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := tio.Stdin.Read(buf)
				if n > 0 && write(websocket.MessageBinary, buf[:n]) != nil {
					return
				}
				if err != nil {
					eof, _ := json.Marshal(TTYControl{EOF: true})
					write(websocket.MessageText, eof)
					return
				}
			}
		}()
	}
	if tio.Control != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case ctl := <-tio.Control:
					data, _ := json.Marshal(ctl)
					if write(websocket.MessageText, data) != nil {
						return
					}
				}
			}
		}()
	}
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return 0, fmt.Errorf("interactive exec ended early: %w", err)
		}
		if typ == websocket.MessageText {
			var res TTYResult
			if err := json.Unmarshal(data, &res); err != nil {
				return 0, fmt.Errorf("interactive exec: bad result: %w", err)
			}
			conn.Close(websocket.StatusNormalClosure, "")
			if res.Error != nil {
				return 0, &APIError{Status: http.StatusOK, ErrorMsg: *res.Error}
			}
			if res.Exit == nil {
				return 0, fmt.Errorf("interactive exec: a result without an exit code")
			}
			return *res.Exit, nil
		}
		if len(data) == 0 {
			continue
		}
		w := tio.Stdout
		if data[0] == StreamStderr {
			w = tio.Stderr
		}
		if w != nil {
			w.Write(data[1:])
		}
	}
}
