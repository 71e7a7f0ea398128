// Package e2b serves the parts of E2B's control API and of its in-sandbox
// daemon ("envd": Connect RPC for processes and the file system, plain
// HTTP for files) that the unmodified E2B JavaScript SDK uses, over real
// sbx sandboxes (docs/e2b.md; docs/e2b-protocol.md is what the SDK sends).
// One endpoint serves both: the SDK's E2B_API_URL and E2B_SANDBOX_URL
// both point at the daemon's TCP listener, and every envd request names
// its sandbox in the E2b-Sandbox-Id header.
//
// Auth: control requests carry the daemon's token as X-API-KEY; envd
// requests the sandbox's own access token (X-Access-Token), handed out
// by create and connect. Sandboxes are sbx sandboxes named e2b-..., each
// with an empty workspace folder of its own under WorkRoot, and the same
// network policy and credential rules as any other.
package e2b

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/agents"
	"github.com/sbx-dev/sbx/internal/jsonbody"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// EnvdVersion is the envd version sbx answers as: the SDK turns features
// on by it (0.5.7: raw uploads; below 0.4.0 it would send user names).
const EnvdVersion = "0.5.7"

// DefaultTimeout is a sandbox's lifetime when create names none, as E2B's;
// MaxTimeout the longest one may ask for (E2B's longest plan allows 24 h).
const (
	DefaultTimeout = 300 * time.Second
	MaxTimeout     = 24 * time.Hour
)

// lifetime is a request's timeout in seconds as a duration: 0 for none
// given, an error past MaxTimeout or below 0.
func lifetime(secs int64) (time.Duration, error) {
	if secs < 0 || secs > int64(MaxTimeout/time.Second) {
		return 0, fmt.Errorf("timeout %d s: give 1 to %d seconds", secs, int64(MaxTimeout/time.Second))
	}
	return time.Duration(secs) * time.Second, nil
}

// Server serves the E2B routes.
type Server struct {
	M *lifecycle.Manager
	// Create makes (not starts) a sandbox called name of template (an
	// sbx template or agent name; "base" is the default) on workspace;
	// nil is newSandbox (lifecycle.Manager.New).
	Create func(ctx context.Context, name, template, workspace string) (*sandbox.Sandbox, error)
	// Start starts a sandbox in the background.
	Start func(ctx context.Context, sb *sandbox.Sandbox) error
	// APIKey is what X-API-KEY must be (the daemon's token).
	APIKey string
	// WorkRoot holds each sandbox's workspace folder, made for UID:GID.
	WorkRoot string
	UID, GID int
	// HomeAlias links /home/user, E2B's home, to the agent user's home
	// in each new guest.
	HomeAlias bool
	Log       *slog.Logger

	mu    sync.Mutex
	boxes map[string]*box
}

// box is one sandbox made through the E2B API.
type box struct {
	id, template, token, dir string
	sb                       *sandbox.Sandbox
	started, ends            time.Time
	timer                    *time.Timer
	metadata, envs           map[string]string

	mu      sync.Mutex
	nextPID uint32
	procs   map[uint32]*proc
}

// proc is a process started with process.Process/Start.
type proc struct {
	pid     uint32
	cfg     processConfig
	tag     string
	signals chan syscall.Signal
}

// Handler serves the control API and envd.
func (s *Server) Handler() http.Handler {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	ctl := func(h func(http.ResponseWriter, *http.Request)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if key := r.Header.Get("X-API-KEY"); s.APIKey == "" || subtle.ConstantTimeCompare([]byte(key), []byte(s.APIKey)) != 1 {
				// A refused client does not keep its connection (see
				// daemon.RequireToken).
				w.Header().Set("Connection", "close")
				apiError(w, http.StatusUnauthorized, "a valid X-API-KEY (the daemon's token) is required")
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("POST /v2/sandboxes", ctl(s.create))
	mux.HandleFunc("GET /v2/sandboxes", ctl(s.list))
	mux.HandleFunc("POST /v2/sandboxes/{id}/connect", ctl(s.connect))
	mux.HandleFunc("GET /sandboxes/{id}", ctl(s.info))
	mux.HandleFunc("DELETE /sandboxes/{id}", ctl(s.kill))
	mux.HandleFunc("POST /sandboxes/{id}/timeout", ctl(s.setTimeout))
	env := func(h func(http.ResponseWriter, *http.Request, *box)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			b := s.box(r.Header.Get("E2b-Sandbox-Id"))
			if b == nil {
				// The SDK reads 502 as "not running" (isRunning false).
				w.Header().Set("Connection", "close")
				http.Error(w, "no such sandbox", http.StatusBadGateway)
				return
			}
			if tok := r.Header.Get("X-Access-Token"); subtle.ConstantTimeCompare([]byte(tok), []byte(b.token)) != 1 {
				w.Header().Set("Connection", "close")
				rpcError(w, http.StatusUnauthorized, "unauthenticated", "the sandbox's access token (X-Access-Token) is required")
				return
			}
			h(w, r, b)
		}
	}
	mux.HandleFunc("GET /health", env(s.health))
	mux.HandleFunc("GET /files", env(s.readFile))
	mux.HandleFunc("POST /files", env(s.writeFile))
	mux.HandleFunc("POST /process.Process/Start", env(s.startProcess))
	mux.HandleFunc("POST /process.Process/List", env(s.listProcesses))
	mux.HandleFunc("POST /process.Process/SendSignal", env(s.sendSignal))
	mux.HandleFunc("POST /filesystem.Filesystem/ListDir", env(s.listDir))
	mux.HandleFunc("POST /filesystem.Filesystem/Stat", env(s.stat))
	mux.HandleFunc("POST /filesystem.Filesystem/MakeDir", env(s.makeDir))
	mux.HandleFunc("POST /filesystem.Filesystem/Remove", env(s.remove))
	mux.HandleFunc("POST /filesystem.Filesystem/Move", env(s.move))
	return mux
}

func (s *Server) box(id string) *box {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.boxes[id]
}

// apiError is a control API error: the SDK reads the body's code (a 404
// is "not found" only with code 404).
func apiError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"code": status, "message": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func readJSON(r *http.Request, v any) error {
	return jsonbody.DecodeAllowUnknown(http.MaxBytesReader(nil, r.Body, 1<<20), v)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// sandboxJSON is what create and connect answer.
func (b *box) sandboxJSON() map[string]any {
	return map[string]any{
		"sandboxID": b.id, "templateID": b.template, "clientID": "sbx",
		"envdVersion": EnvdVersion, "envdAccessToken": b.token,
	}
}

type createBody struct {
	TemplateID string            `json:"templateID"`
	Timeout    int64             `json:"timeout"`
	Metadata   map[string]string `json:"metadata"`
	EnvVars    map[string]string `json:"envVars"`
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var body createBody
	if err := readJSON(r, &body); err != nil {
		apiError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	if body.TemplateID == "" {
		body.TemplateID = "base"
	}
	life, err := lifetime(body.Timeout)
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	// The workspaces' folder must be the daemon user's and writable by
	// nobody else (another local user could swap a workspace in it).
	if err := paths.PrivateDir(s.WorkRoot); err != nil {
		apiError(w, http.StatusInternalServerError, "the E2B workspaces folder is refused: "+err.Error())
		return
	}
	id := "e2b-" + randomHex(6)
	dir := filepath.Join(s.WorkRoot, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		apiError(w, http.StatusInternalServerError, "cannot make the sandbox's workspace: "+err.Error())
		return
	}
	if os.Geteuid() == 0 {
		os.Chown(dir, s.UID, s.GID)
	}
	fail := func(err error) {
		os.RemoveAll(dir)
		status, msg := http.StatusBadRequest, err.Error()
		if le, ok := lifecycle.AsError(err); ok {
			msg = le.Error()
			if le.Hint != "" {
				msg += " (" + le.Hint + ")"
			}
			if le.Code == lifecycle.Failed || le.Code == lifecycle.Internal {
				status = http.StatusInternalServerError
			}
		}
		apiError(w, status, msg)
	}
	ctx := r.Context()
	create := s.Create
	if create == nil {
		create = s.newSandbox
	}
	sb, err := create(ctx, id, body.TemplateID, dir)
	if err != nil {
		fail(err)
		return
	}
	// From here the sandbox exists: whatever ends this request early
	// (a failure, the client gone) takes it out again.
	bg := context.WithoutCancel(ctx)
	abandon := func(err error) {
		if rerr := s.M.Remove(bg, sb, lifecycle.RemoveRequest{Force: true}); rerr != nil {
			s.Log.Warn("e2b: removing a sandbox whose create failed", "sandbox", id, "err", rerr)
		}
		fail(err)
	}
	b := &box{id: id, template: body.TemplateID, token: randomHex(24), dir: dir, sb: sb, started: time.Now(),
		metadata: body.Metadata, envs: body.EnvVars, procs: map[uint32]*proc{}}
	if err := s.Start(ctx, sb); err != nil {
		abandon(err)
		return
	}
	// E2B's default user is "user" with its home at /home/user: the
	// SDK's examples write there. It is the agent user's home here.
	if s.HomeAlias {
		var errb limitedBuffer
		if st, err := s.M.Exec(bg, sb, lifecycle.ExecRequest{ExecRequest: agentapi.ExecRequest{Argv: []string{"sh", "-c", "[ -e /home/user ] || ln -s /home/agent /home/user"}, User: "root"}},
			agentclient.ExecIO{Stderr: &errb}); err != nil || st.Code != 0 {
			s.Log.Warn("e2b: /home/user", "sandbox", id, "err", err, "stderr", errb.String())
		}
	}
	if ctx.Err() != nil {
		abandon(ctx.Err())
		return
	}
	s.mu.Lock()
	if s.boxes == nil {
		s.boxes = map[string]*box{}
	}
	s.boxes[id] = b
	s.mu.Unlock()
	s.armTimeout(b, life)
	writeJSON(w, http.StatusCreated, b.sandboxJSON())
}

// armTimeout (re)sets b's lifetime: when it ends the sandbox is removed,
// as E2B's are.
func (s *Server) armTimeout(b *box, d time.Duration) {
	if d <= 0 {
		d = DefaultTimeout
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b.ends = time.Now().Add(d)
	if b.timer != nil {
		b.timer.Stop()
	}
	b.timer = time.AfterFunc(d, func() {
		s.Log.Info("e2b: sandbox timed out", "sandbox", b.id)
		if err := s.destroy(context.Background(), b); err != nil {
			// Kept, and tried again a minute on.
			s.Log.Warn("e2b: removing a timed-out sandbox", "sandbox", b.id, "err", err)
			s.armTimeout(b, time.Minute)
		}
	})
}

// destroy removes b's sandbox and workspace, then forgets it; a sandbox
// that could not be removed stays known (and its timer on).
func (s *Server) destroy(ctx context.Context, b *box) error {
	err := s.M.Remove(ctx, b.sb, lifecycle.RemoveRequest{Force: true})
	if err != nil && !errors.Is(err, lifecycle.ErrNotFound) {
		return err
	}
	s.mu.Lock()
	if b.timer != nil {
		b.timer.Stop()
	}
	delete(s.boxes, b.id)
	s.mu.Unlock()
	os.RemoveAll(b.dir)
	return nil
}

func (s *Server) byID(w http.ResponseWriter, r *http.Request) *box {
	b := s.box(r.PathValue("id"))
	if b == nil {
		apiError(w, http.StatusNotFound, fmt.Sprintf("sandbox %q not found", r.PathValue("id")))
	}
	return b
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	b := s.byID(w, r)
	if b == nil {
		return
	}
	var body struct {
		Timeout int64 `json:"timeout"`
	}
	_ = readJSON(r, &body)
	life, err := lifetime(body.Timeout)
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.Start(r.Context(), b.sb); err != nil {
		apiError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if life > 0 {
		s.armTimeout(b, life)
	}
	writeJSON(w, http.StatusOK, b.sandboxJSON())
}

func (s *Server) listed(b *box) map[string]any {
	in := s.M.Info(b.sb)
	state := "running"
	if in.Status != sandbox.StatusRunning {
		state = "paused"
	}
	s.mu.Lock()
	ends := b.ends
	s.mu.Unlock()
	meta := b.metadata
	if meta == nil {
		meta = map[string]string{}
	}
	return map[string]any{
		"sandboxID": b.id, "templateID": b.template, "clientID": "sbx", "envdVersion": EnvdVersion,
		"startedAt": b.started.UTC().Format(time.RFC3339), "endAt": ends.UTC().Format(time.RFC3339),
		"state": state, "cpuCount": in.CPUs, "memoryMB": in.MemoryMiB, "diskSizeMB": in.DiskBytes >> 20, "metadata": meta,
	}
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	boxes := make([]*box, 0, len(s.boxes))
	for _, b := range s.boxes {
		boxes = append(boxes, b)
	}
	s.mu.Unlock()
	out := []map[string]any{}
	for _, b := range boxes {
		out = append(out, s.listed(b))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	if b := s.byID(w, r); b != nil {
		writeJSON(w, http.StatusOK, s.listed(b))
	}
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request) {
	b := s.byID(w, r)
	if b == nil {
		return
	}
	if err := s.destroy(r.Context(), b); err != nil {
		apiError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request) {
	b := s.byID(w, r)
	if b == nil {
		return
	}
	var body struct {
		Timeout int64 `json:"timeout"`
	}
	if err := readJSON(r, &body); err != nil || body.Timeout <= 0 {
		apiError(w, http.StatusBadRequest, "give a timeout in seconds")
		return
	}
	life, err := lifetime(body.Timeout)
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.armTimeout(b, life)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) health(w http.ResponseWriter, r *http.Request, b *box) {
	if s.M.Info(b.sb).Status != sandbox.StatusRunning {
		http.Error(w, "not running", http.StatusBadGateway)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// limitedBuffer keeps the first 64 KiB written to it.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 64<<10 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }

// newSandbox makes a sandbox for E2B's create: template "base" (or none)
// is the default shell sandbox, an agent's name that agent's, anything
// else an sbx template.
func (s *Server) newSandbox(ctx context.Context, name, tmpl, workspace string) (*sandbox.Sandbox, error) {
	ws, err := lifecycle.ResolveWorkspaces([]string{workspace})
	if err != nil {
		return nil, err
	}
	req := lifecycle.NewRequest{Name: name, Workspaces: ws}
	switch _, isAgent := agents.Find(tmpl); {
	case tmpl == "base" || tmpl == "":
	case isAgent:
		req.Agent = tmpl
	default:
		req.Template = tmpl
	}
	return s.M.New(ctx, req)
}
