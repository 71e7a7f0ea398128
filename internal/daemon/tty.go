package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/jsonbody"
	"github.com/sbx-dev/sbx/internal/lifecycle"
)

// An interactive exec is a WebSocket on GET /v1/sandboxes/{name}/exec.
// The client's first message is a text one holding a TTYRequest; then
// its binary messages are the process's stdin and its text ones a
// TTYControl each. The server's binary messages are output, their first
// byte the stream (1 stdout, 2 stderr: with a TTY all is 1); its last
// text message is a TTYResult, and it closes the socket normally.
const (
	StreamStdout = 1
	StreamStderr = 2
)

// TTYRequest is the first message of an interactive exec: ExecRequest's
// fields, TTY (a pseudo-terminal in the guest, the default) and its size.
type TTYRequest struct {
	ExecRequest
	// TTY false runs the process on pipes (stdout and stderr apart).
	TTY  *bool  `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	Term string `json:"term,omitempty"`
}

// TTYControl is a text message of the client: a new terminal size, a
// signal for the process (by name: INT, TERM, HUP, KILL, QUIT, USR1,
// USR2, WINCH), or the end of its stdin.
type TTYControl struct {
	Resize *agentapi.Size `json:"resize,omitempty"`
	Signal string         `json:"signal,omitempty"`
	EOF    bool           `json:"eof,omitempty"`
}

// TTYResult is the server's last message: the exit code, or an error.
type TTYResult struct {
	Exit  *int      `json:"exit,omitempty"`
	Error *ErrorMsg `json:"error,omitempty"`
}

var signalNames = map[string]syscall.Signal{
	"INT": syscall.SIGINT, "TERM": syscall.SIGTERM, "HUP": syscall.SIGHUP, "KILL": syscall.SIGKILL,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "WINCH": syscall.SIGWINCH,
}

// maxTTYMessage caps one message of the client (stdin comes in pieces).
const maxTTYMessage = 1 << 20

// maxStdinQueue caps the stdin waiting for a process that does not read
// it; firstMessageTimeout bounds the wait for the TTYRequest.
const (
	maxStdinQueue       = 16 << 20
	firstMessageTimeout = 30 * time.Second
)

func (s *Server) execTTY(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandbox(w, r)
	if !ok {
		return
	}
	// Refusals in the API's JSON (Accept would answer them in text): a
	// request that is no WebSocket upgrade, and a browser's Origin other
	// than the daemon's own host (Accept checks it again).
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || !headerHas(r.Header, "Connection", "upgrade") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		writeError(w, http.StatusUpgradeRequired, ErrorMsg{Code: string(lifecycle.Invalid), Message: "an interactive exec is a WebSocket (Upgrade: websocket); for a plain exec, POST to this path"})
		return
	}
	if o := r.Header.Get("Origin"); o != "" {
		if u, err := url.Parse(o); err != nil || !strings.EqualFold(u.Host, r.Host) {
			writeError(w, http.StatusForbidden, ErrorMsg{Code: "forbidden", Message: fmt.Sprintf("a browser page from %.100q may not open an exec; only the daemon's own origin may", o)})
			return
		}
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered
	}
	defer c.CloseNow()
	c.SetReadLimit(maxTTYMessage)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	result := func(res TTYResult) {
		data, _ := json.Marshal(res)
		if c.Write(ctx, websocket.MessageText, data) == nil {
			c.Close(websocket.StatusNormalClosure, "")
		}
	}
	fail := func(msg ErrorMsg) { result(TTYResult{Error: &msg}) }
	// The first message within a bound: a socket that sends nothing
	// does not hold its slot.
	firstCtx, firstCancel := context.WithTimeout(ctx, firstMessageTimeout)
	typ, data, err := c.Read(firstCtx)
	firstCancel()
	if err != nil {
		return
	}
	var req TTYRequest
	if typ != websocket.MessageText || jsonbody.Decode(bytes.NewReader(data), &req) != nil {
		fail(ErrorMsg{Code: string(lifecycle.Invalid), Message: "the first message must be a JSON TTYRequest (text)"})
		return
	}
	if len(req.Argv) == 0 {
		fail(ErrorMsg{Code: string(lifecycle.Invalid), Field: "argv", Message: "argv is empty"})
		return
	}
	tty := req.TTY == nil || *req.TTY
	stdin, stdinW := io.Pipe()
	defer stdin.Close()
	resize := make(chan agentclient.Size, 4)
	sigs := make(chan syscall.Signal, 4)
	// Stdin goes to the process from a queue, so the loop below never
	// blocks on a process that does not read its input: it keeps reading,
	// and sees the client go (which ends the exec: the guest kills the
	// process) and its signals. Past maxStdinQueue bytes waiting, the
	// exec ends with an error.
	queue := make(chan []byte, maxStdinQueue/1024)
	var queued atomic.Int64
	go func() {
		defer stdinW.Close()
		for data := range queue {
			if data == nil { // eof
				return
			}
			if _, err := stdinW.Write(data); err != nil {
				return
			}
			queued.Add(-int64(len(data)))
		}
	}()
	// abort ends the exec with its message: stdin backed up, or a
	// control message that is not one.
	abort := make(chan ErrorMsg, 1)
	go func() {
		defer cancel()
		defer close(queue)
		eof := false
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				if eof || len(data) == 0 {
					continue
				}
				if queued.Add(int64(len(data))) > maxStdinQueue {
					abort <- stdinBackedUp
					return
				}
				select {
				case queue <- data:
				default:
					abort <- stdinBackedUp
					return
				}
				continue
			}
			var ctl TTYControl
			if jsonbody.Decode(bytes.NewReader(data), &ctl) != nil || (ctl.Resize == nil && ctl.Signal == "" && !ctl.EOF) {
				abort <- ErrorMsg{Code: string(lifecycle.Invalid), Field: "control", Message: fmt.Sprintf("a text message must be a control message: {\"resize\":{\"rows\":R,\"cols\":C}}, {\"signal\":\"NAME\"} or {\"eof\":true}; got %.80q", data)}
				return
			}
			if _, ok := signalNames[strings.TrimPrefix(strings.ToUpper(ctl.Signal), "SIG")]; ctl.Signal != "" && !ok {
				abort <- ErrorMsg{Code: string(lifecycle.Invalid), Field: "signal", Message: fmt.Sprintf("no signal named %.20q: use INT, TERM, HUP, KILL, QUIT, USR1, USR2 or WINCH", ctl.Signal)}
				return
			}
			if ctl.Resize != nil {
				select {
				case resize <- *ctl.Resize:
				default:
				}
			}
			if sig, ok := signalNames[strings.TrimPrefix(strings.ToUpper(ctl.Signal), "SIG")]; ok {
				select {
				case sigs <- sig:
				default:
				}
			}
			if ctl.EOF && !eof {
				eof = true
				select {
				case queue <- nil:
				default:
					abort <- stdinBackedUp
					return
				}
			}
		}
	}()
	var mu sync.Mutex
	out := func(stream byte) io.Writer {
		return writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			if err := c.Write(ctx, websocket.MessageBinary, append([]byte{stream}, p...)); err != nil {
				return 0, err
			}
			return len(p), nil
		})
	}
	ereq := agentapi.ExecRequest{Argv: req.Argv, Env: req.Env, Dir: req.Dir, User: req.User, TTY: tty, Rows: req.Rows, Cols: req.Cols, Term: req.Term}
	st, err := s.M.Exec(ctx, sb, lifecycle.ExecRequest{ExecRequest: ereq},
		agentclient.ExecIO{Stdin: stdin, Stdout: out(StreamStdout), Stderr: out(StreamStderr), Resize: resize, Signals: sigs})
	select {
	case msg := <-abort:
		// ctx is cancelled: answer on a fresh one.
		data, _ := json.Marshal(TTYResult{Error: &msg})
		wctx, wcancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		defer wcancel()
		if c.Write(wctx, websocket.MessageText, data) == nil {
			c.Close(websocket.StatusPolicyViolation, msg.Field)
		}
		return
	default:
	}
	if err != nil {
		if ctx.Err() == nil {
			fail(errorMsg(err))
		}
		return
	}
	code := st.Code
	result(TTYResult{Exit: &code})
}

var stdinBackedUp = ErrorMsg{Code: string(lifecycle.Invalid), Field: "stdin",
	Message: "the process did not read its input: more than 16 MiB of stdin waited; the exec was ended"}

// headerHas reports whether header key lists token (comma-separated,
// any case).
func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
