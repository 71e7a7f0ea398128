// Package daemon is `sbx daemon`: the sandbox lifecycle (internal/lifecycle)
// served as a REST + JSON API over HTTP, on a unix socket (0600, in the
// user's runtime folder) or, with a bearer token, on TCP. docs/api.md
// describes it and api/openapi.yaml is its OpenAPI document, checked
// against Routes by a test; Client is a small Go client.
package daemon

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/jsonbody"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// CreateRequest is the body of POST /v1/sandboxes. Agent defaults to
// shell; Template to the agent's; Workspace must be an absolute path.
type CreateRequest struct {
	Name      string `json:"name,omitempty"`
	Agent     string `json:"agent,omitempty"`
	Workspace string `json:"workspace"`
	Template  string `json:"template,omitempty"`
	CPUs      int    `json:"cpus,omitempty"`
	Memory    string `json:"memory,omitempty"`
	Disk      string `json:"disk,omitempty"`
	Cold      bool   `json:"cold,omitempty"`
	// NoStart leaves the new sandbox stopped.
	NoStart bool `json:"noStart,omitempty"`
}

// ExecRequest is the body of POST /v1/sandboxes/{name}/exec.
type ExecRequest struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	User string   `json:"user,omitempty"`
	// Stdin is the process's whole standard input.
	Stdin []byte `json:"stdin,omitempty"`
}

// ExecFrame is one line of an exec's answer (application/x-ndjson): a
// piece of output, then one frame with the exit code or an error.
type ExecFrame struct {
	Stdout []byte    `json:"stdout,omitempty"`
	Stderr []byte    `json:"stderr,omitempty"`
	Exit   *int      `json:"exit,omitempty"`
	Error  *ErrorMsg `json:"error,omitempty"`
}

// PortsRequest is the body of POST /v1/sandboxes/{name}/ports: specs as
// `sbx ports` takes them ([[HOST_IP:]HOST_PORT:]SANDBOX_PORT).
type PortsRequest struct {
	Publish   []string `json:"publish,omitempty"`
	Unpublish []string `json:"unpublish,omitempty"`
}

// ErrorMsg is an error answer's body: {"error": ErrorMsg}.
type ErrorMsg struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
	Field   string `json:"field,omitempty"`
}

// Server serves the API of one store's lifecycle.
type Server struct {
	M *lifecycle.Manager
	// Create makes a new sandbox from a request; nil is the lifecycle's
	// (newSandbox: Manager.New, with the checks, defaults and templates
	// of `sbx create`). One that exists is a Conflict.
	Create func(ctx context.Context, req CreateRequest) (*sandbox.Sandbox, error)
	// Start starts a sandbox in the background (the CLI's start, with
	// its steps: workspace check, diff baseline, clone setup).
	Start func(ctx context.Context, sb *sandbox.Sandbox) error
	// Token, when set, is required as "Authorization: Bearer TOKEN".
	Token string
	Log   *slog.Logger

	mu   sync.Mutex
	subs map[chan lifecycle.Event]struct{}
}

// Route is one route of the API.
type Route struct {
	Method, Path string
	handle       func(s *Server, w http.ResponseWriter, r *http.Request)
}

// Routes are the API's routes, as api/openapi.yaml lists them.
var Routes = []Route{
	{"GET", "/v1/version", (*Server).version},
	{"GET", "/v1/sandboxes", (*Server).list},
	{"POST", "/v1/sandboxes", (*Server).create},
	{"GET", "/v1/sandboxes/{name}", (*Server).inspect},
	{"DELETE", "/v1/sandboxes/{name}", (*Server).remove},
	{"POST", "/v1/sandboxes/{name}/start", (*Server).start},
	{"POST", "/v1/sandboxes/{name}/stop", (*Server).stop},
	{"POST", "/v1/sandboxes/{name}/exec", (*Server).exec},
	{"GET", "/v1/sandboxes/{name}/exec", (*Server).execTTY},
	{"GET", "/v1/sandboxes/{name}/files", (*Server).download},
	{"PUT", "/v1/sandboxes/{name}/files", (*Server).upload},
	{"GET", "/v1/sandboxes/{name}/ports", (*Server).ports},
	{"POST", "/v1/sandboxes/{name}/ports", (*Server).ports},
	{"GET", "/v1/policy", (*Server).getPolicy},
	{"PUT", "/v1/policy/default", (*Server).setDefault},
	{"POST", "/v1/policy/rules", (*Server).addRules},
	{"DELETE", "/v1/policy/rules", (*Server).removeRules},
	{"GET", "/v1/policy/log", (*Server).policyLog},
	{"GET", "/v1/events", (*Server).events},
}

// Version is the API's version, answered by GET /v1/version.
const Version = "1"

// Handler is the API; it also takes the Manager's events for
// /v1/events (it sets M.Events, passing them on to the one it had).
func (s *Server) Handler() http.Handler {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	prev := s.M.Events
	s.M.Events = func(ev lifecycle.Event) {
		if prev != nil {
			prev(ev)
		}
		s.publish(ev)
	}
	mux := http.NewServeMux()
	for _, rt := range Routes {
		h := rt.handle
		mux.HandleFunc(rt.Method+" "+rt.Path, func(w http.ResponseWriter, r *http.Request) { h(s, w, r) })
	}
	var top http.Handler = jsonRefusals(mux)
	if s.Token != "" {
		return RequireToken(top, s.Token)
	}
	return top
}

// jsonRefusals answers requests no route takes (an unknown path, a
// method a path does not have) with the API's JSON error, not the
// mux's text.
func jsonRefusals(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		// The mux says which refusal (404 or 405, with Allow).
		rec := &statusRecorder{header: http.Header{}}
		mux.ServeHTTP(rec, r)
		msg := ErrorMsg{Code: string(lifecycle.NotFound), Message: "no route " + r.Method + " " + r.URL.Path, Hint: "see docs/api.md for the routes"}
		if rec.status == http.StatusMethodNotAllowed {
			allow := rec.header.Get("Allow")
			w.Header().Set("Allow", allow)
			msg = ErrorMsg{Code: "method_not_allowed", Message: r.URL.Path + " does not take " + r.Method + " (it takes " + allow + ")"}
		}
		writeError(w, cmp.Or(rec.status, http.StatusNotFound), msg)
	})
}

// statusRecorder keeps a response's status and headers, and drops its
// body.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(p []byte) (int, error) { return len(p), nil }
func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

// RequireToken is h for requests carrying "Authorization: Bearer token";
// others get 401.
func RequireToken(h http.Handler, token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sbx"`)
			// A refused client does not keep its connection: on TCP
			// anyone on the machine can connect, and kept-alive refusals
			// would fill the listener's slots.
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusUnauthorized, ErrorMsg{Code: "unauthorized", Message: "a bearer token is required (Authorization: Bearer TOKEN)"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"api": Version})
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	infos, err := s.M.List()
	if err != nil {
		s.Log.Warn("list", "err", err)
	}
	writeJSON(w, http.StatusOK, infos)
}

func (s *Server) sandbox(w http.ResponseWriter, r *http.Request) (*sandbox.Sandbox, bool) {
	sb, err := s.M.Get(r.PathValue("name"))
	if err != nil {
		s.fail(w, err)
		return nil, false
	}
	return sb, true
}

func (s *Server) inspect(w http.ResponseWriter, r *http.Request) {
	if sb, ok := s.sandbox(w, r); ok {
		writeJSON(w, http.StatusOK, s.M.Info(sb))
	}
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.Workspace == "" || !strings.HasPrefix(req.Workspace, "/") {
		writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "workspace", Message: "workspace must be an absolute path"})
		return
	}
	create := s.Create
	if create == nil {
		create = s.newSandbox
	}
	sb, err := create(r.Context(), req)
	if err != nil {
		s.fail(w, err)
		return
	}
	if !req.NoStart {
		if err := s.Start(r.Context(), sb); err != nil {
			// The request failed as a whole: the sandbox goes too, so
			// a retry does not meet a name taken by a crashed one.
			if rerr := s.M.Remove(context.WithoutCancel(r.Context()), sb, lifecycle.RemoveRequest{Force: true}); rerr != nil {
				s.Log.Warn("create: removing the sandbox that did not start", "sandbox", sb.Config.Name, "err", rerr)
			}
			s.fail(w, err)
			return
		}
	}
	writeJSON(w, http.StatusCreated, s.M.Info(sb))
}

// newSandbox is the create of a Server without a Create hook: the same
// checks, defaults and templates as `sbx create` (lifecycle.Manager.New).
// Without a name, a sandbox of the same agent on the same workspace is a
// Conflict, as `sbx create` finds it rather than making a second.
func (s *Server) newSandbox(ctx context.Context, req CreateRequest) (*sandbox.Sandbox, error) {
	ws, err := lifecycle.ResolveWorkspaces([]string{req.Workspace})
	if err != nil {
		return nil, err
	}
	agent := req.Agent
	if agent == "" {
		agent = "shell"
	}
	if req.Name == "" {
		if sb, ok := s.M.FindFor(agent, ws[0].Path); ok {
			return nil, &lifecycle.Error{Code: lifecycle.Conflict, Field: "name", Sandbox: sb.Config.Name,
				Msg: fmt.Sprintf("sandbox %s already exists for %s", sb.Config.Name, sb.PrimaryWorkspace()), Hint: "start it, or give another name"}
		}
	}
	return s.M.New(ctx, lifecycle.NewRequest{Name: req.Name, Agent: agent, Workspaces: ws, Template: req.Template,
		CPUs: req.CPUs, Memory: req.Memory, Disk: req.Disk, Cold: req.Cold})
}

func (s *Server) start(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandbox(w, r)
	if !ok {
		return
	}
	if err := s.Start(r.Context(), sb); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.M.Info(sb))
}

func (s *Server) stop(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandbox(w, r)
	if !ok {
		return
	}
	if err := s.M.Stop(r.Context(), sb); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.M.Info(sb))
}

func (s *Server) remove(w http.ResponseWriter, r *http.Request) {
	force := r.URL.Query().Get("force")
	forced := force == "1" || force == "true"
	sb, err := s.M.Get(r.PathValue("name"))
	if err != nil {
		// A folder whose config is damaged goes by its id, with force.
		d, ok := s.M.GetDamaged(r.PathValue("name"))
		switch {
		case !ok:
			s.fail(w, err)
			return
		case !forced:
			writeError(w, http.StatusConflict, ErrorMsg{Code: string(lifecycle.Conflict),
				Message: "sandbox folder " + d.Config.ID + " is damaged (its config cannot be read)", Hint: "remove it with force=true"})
			return
		}
		sb = d
	}
	if err := s.M.Remove(r.Context(), sb, lifecycle.RemoveRequest{Force: forced}); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) ports(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandbox(w, r)
	if !ok {
		return
	}
	var req lifecycle.PortsRequest
	if r.Method == http.MethodPost {
		var body PortsRequest
		if !readJSON(w, r, &body) {
			return
		}
		for _, list := range []struct {
			specs []string
			to    *[]sandbox.Port
			field string
		}{{body.Publish, &req.Publish, "publish"}, {body.Unpublish, &req.Unpublish, "unpublish"}} {
			for _, spec := range list.specs {
				p, err := sandbox.ParsePort(spec)
				if err != nil {
					writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: list.field, Message: err.Error()})
					return
				}
				*list.to = append(*list.to, p)
			}
		}
	}
	ports, err := s.M.Ports(r.Context(), sb, req)
	if err != nil {
		s.fail(w, err)
		return
	}
	if ports == nil {
		ports = []sandbox.Port{}
	}
	writeJSON(w, http.StatusOK, ports)
}

// exec streams the process's output as ExecFrame lines, then its exit.
func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandbox(w, r)
	if !ok {
		return
	}
	var req ExecRequest
	if !readJSON(w, r, &req) {
		return
	}
	if len(req.Argv) == 0 {
		writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "argv", Message: "argv is empty"})
		return
	}
	// What can be refused before the stream starts is an HTTP error: a
	// bad field, a sandbox that is not running. What the guest refuses
	// (no such program, user or folder) comes as the stream's error frame.
	xr := agentapi.ExecRequest{Argv: req.Argv, Env: req.Env, Dir: req.Dir, User: req.User}
	if err := lifecycle.CheckExec(xr); err != nil {
		s.fail(w, err)
		return
	}
	if st, err := s.M.Store.Status(sb); err == nil && st.Status != sandbox.StatusRunning {
		s.fail(w, lifecycle.NotRunning(sb))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fw := &frameWriter{w: w, enc: json.NewEncoder(w)}
	if f, ok := w.(http.Flusher); ok {
		fw.flush = f.Flush
	}
	fw.flushNow()
	var stdin io.Reader
	if len(req.Stdin) > 0 {
		stdin = strings.NewReader(string(req.Stdin))
	}
	st, err := s.M.Exec(r.Context(), sb, lifecycle.ExecRequest{ExecRequest: xr},
		agentclient.ExecIO{Stdin: stdin, Stdout: fw.stream(false), Stderr: fw.stream(true)})
	if err != nil {
		msg := errorMsg(err)
		fw.frame(ExecFrame{Error: &msg})
		return
	}
	code := st.Code
	fw.frame(ExecFrame{Exit: &code})
}

// frameWriter writes ExecFrames from the two output streams, one at a
// time, each flushed at once.
type frameWriter struct {
	mu    sync.Mutex
	w     io.Writer
	enc   *json.Encoder
	flush func()
}

func (f *frameWriter) flushNow() {
	if f.flush != nil {
		f.flush()
	}
}

func (f *frameWriter) frame(fr ExecFrame) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.enc.Encode(fr)
	f.flushNow()
	return err
}

type streamWriter struct {
	f      *frameWriter
	stderr bool
}

func (f *frameWriter) stream(stderr bool) io.Writer { return streamWriter{f, stderr} }

func (s streamWriter) Write(p []byte) (int, error) {
	fr := ExecFrame{Stdout: p}
	if s.stderr {
		fr = ExecFrame{Stderr: p}
	}
	if err := s.f.frame(fr); err != nil {
		return 0, err
	}
	return len(p), nil
}

// events streams the lifecycle's events as server-sent events, one JSON
// Event per "data:" line, until the client goes.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, ErrorMsg{Code: string(lifecycle.Internal), Message: "streaming is not supported here"})
		return
	}
	ch := make(chan lifecycle.Event, 64)
	s.mu.Lock()
	if s.subs == nil {
		s.subs = map[chan lifecycle.Event]struct{}{}
	}
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, ": sbx events\n\n")
	flusher.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-ch:
			data, _ := json.Marshal(ev)
			if _, err := io.WriteString(w, "data: "+string(data)+"\n\n"); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

// publish passes ev to every events stream; a stream that lags drops it.
func (s *Server) publish(ev lifecycle.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// statusOf is the HTTP status of a lifecycle error code.
var statusOf = map[lifecycle.Code]int{
	lifecycle.NotFound: http.StatusNotFound,
	lifecycle.Conflict: http.StatusConflict,
	lifecycle.Busy:     http.StatusConflict,
	lifecycle.Invalid:  http.StatusBadRequest,
	lifecycle.Failed:   http.StatusBadGateway,
	lifecycle.Internal: http.StatusInternalServerError,
}

func errorMsg(err error) ErrorMsg {
	if le, ok := lifecycle.AsError(err); ok {
		return ErrorMsg{Code: string(le.Code), Message: le.Error(), Hint: le.Hint, Field: le.Field}
	}
	if errors.Is(err, context.Canceled) {
		return ErrorMsg{Code: "canceled", Message: "the request was cancelled"}
	}
	// The CLI's own errors (cli.UserError) say what happened and what to
	// do; they are refusals of the request.
	var ue interface {
		Message() string
		HintText() string
	}
	if errors.As(err, &ue) {
		return ErrorMsg{Code: string(lifecycle.Invalid), Message: ue.Message(), Hint: ue.HintText()}
	}
	return ErrorMsg{Code: string(lifecycle.Internal), Message: err.Error()}
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	msg := errorMsg(err)
	status, ok := statusOf[lifecycle.Code(msg.Code)]
	if !ok {
		status = http.StatusBadRequest
	}
	if status >= 500 {
		s.Log.Warn("request failed", "err", err)
	}
	writeError(w, status, msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg ErrorMsg) {
	writeJSON(w, status, map[string]ErrorMsg{"error": msg})
}

// maxBody caps a request body (exec's stdin included).
const maxBody = 16 << 20

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	// One value, no unknown, repeated or differently spelt key.
	if err := jsonbody.Decode(http.MaxBytesReader(w, r.Body, maxBody), v); err != nil {
		writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Message: "bad request body: " + err.Error()})
		return false
	}
	return true
}
