package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/api/agentapi/archive"
)

// Config configures a Server.
type Config struct {
	// Log receives the server's records; nil discards them.
	Log *slog.Logger
	// Reaper starts and waits for processes; required, and its Run must be
	// running while the server serves exec.
	Reaper *Reaper
	// DefaultUser runs exec requests that name no user; "" means "agent".
	DefaultUser string
	// EtcDir holds the passwd and group files users are resolved from;
	// "" means "/etc".
	EtcDir string
	// Setup applies a setup request; nil answers setup with
	// CodeUnsupported.
	Setup func(ctx context.Context, req *agentapi.SetupRequest) error
	// BaseEnv, if set, returns environment entries every exec gets on top
	// of the login environment (and below the request's own).
	BaseEnv func() []string
	// PowerOff is called, in its own goroutine, after a shutdown request
	// was answered; nil answers shutdown with CodeUnsupported.
	PowerOff func()
}

// Server serves agentapi on yamux sessions. It holds no per-session state,
// so one Server may serve several connections one after another (a
// reconnecting host) or at once.
type Server struct {
	cfg Config
	log *slog.Logger

	// lifeMu orders setup and power-off against execs and copies. Setup
	// and shutdown hold it exclusively; exec starts and copies hold it
	// shared. So an exec or copy that arrives while workspaces are being
	// mounted waits for them, power-off waits for copies in progress, and
	// nothing starts in a guest whose workspaces are being unmounted.
	lifeMu   sync.RWMutex
	stopping bool // guarded by lifeMu; set when a shutdown was accepted
}

// errStopping answers execs and copies that arrive after a shutdown.
var errStopping = &startError{code: agentapi.CodeInternal, msg: "the sandbox is shutting down"}

// whileUp runs fn holding lifeMu shared, unless the guest is shutting
// down; then it returns errStopping.
func (s *Server) whileUp(fn func() error) error {
	s.lifeMu.RLock()
	defer s.lifeMu.RUnlock()
	if s.stopping {
		return errStopping
	}
	return fn()
}

// NewServer returns a Server; it fails if cfg lacks a Reaper.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Reaper == nil {
		return nil, errors.New("new agent server: config has no reaper")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DefaultUser == "" {
		cfg.DefaultUser = "agent"
	}
	if cfg.EtcDir == "" {
		cfg.EtcDir = "/etc"
	}
	return &Server{cfg: cfg, log: cfg.Log}, nil
}

// Serve runs a yamux server session on conn and handles every stream the
// host opens, until the session ends (the host closed it, the connection
// broke) or ctx is done. It closes conn, waits for all its stream handlers
// (exec handlers kill their processes when their stream breaks), and
// returns nil when the session ended normally (the peer closed it, or the
// connection reached EOF or was closed), ctx's error when ctx ended it.
func (s *Server) Serve(ctx context.Context, conn io.ReadWriteCloser) error {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	sess, err := yamux.Server(conn, cfg)
	if err != nil {
		conn.Close()
		return fmt.Errorf("start yamux server: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer sess.Close()
	for {
		stream, err := sess.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) ||
				errors.Is(err, yamux.ErrSessionShutdown) {
				return nil
			}
			return fmt.Errorf("accept agent stream: %w", err)
		}
		wg.Go(func() { s.handle(ctx, stream) })
	}
}

// ServeStream handles one already-accepted stream carrying one operation,
// and closes it. Serve calls it for each stream.
func (s *Server) ServeStream(ctx context.Context, stream net.Conn) {
	s.handle(ctx, stream)
}

func (s *Server) handle(ctx context.Context, stream net.Conn) {
	defer stream.Close()
	defer func() {
		// A panic must not kill PID 1 (a kernel panic); log and drop the stream.
		if r := recover(); r != nil {
			s.log.Error("panic in stream handler", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	var req agentapi.Request
	if err := agentapi.ReadJSON(stream, agentapi.FrameRequest, &req); err != nil {
		if !errors.Is(err, io.EOF) {
			s.log.Warn("read request", "err", err)
		}
		return
	}
	if err := req.Validate(); err != nil {
		s.respondErr(stream, agentapi.CodeInvalid, err)
		return
	}
	start := time.Now()
	s.log.Debug("request", "op", req.Op)
	switch req.Op {
	case agentapi.OpHello:
		s.hello(stream, req.Hello)
	case agentapi.OpHealth:
		s.health(stream)
	case agentapi.OpSetup:
		s.setup(ctx, stream, req.Setup)
	case agentapi.OpShutdown:
		s.shutdown(stream)
	case agentapi.OpExec:
		s.exec(ctx, stream, req.Exec)
	case agentapi.OpCopyIn:
		s.copyIn(stream, req.CopyIn)
	case agentapi.OpCopyOut:
		s.copyOut(stream, req.CopyOut)
	}
	s.log.Debug("request done", "op", req.Op, "duration", time.Since(start))
}

func (s *Server) respond(w io.Writer, resp agentapi.Response) {
	if err := agentapi.WriteJSON(w, agentapi.FrameResponse, resp); err != nil {
		s.log.Warn("write response", "err", err)
	}
}

func (s *Server) respondErr(w io.Writer, code agentapi.ErrorCode, err error) {
	s.respond(w, agentapi.Response{OK: false, Code: code, Error: err.Error()})
}

// codeOf classifies an error for a Response.
func codeOf(err error) agentapi.ErrorCode {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return agentapi.CodeNotFound
	case errors.Is(err, fs.ErrPermission):
		return agentapi.CodePermission
	case errors.Is(err, archive.ErrUnsafeEntry), errors.Is(err, archive.ErrNotCopyable), errors.Is(err, archive.ErrNotFolder):
		return agentapi.CodeInvalid
	}
	return agentapi.CodeInternal
}

func (s *Server) hello(w io.Writer, req *agentapi.HelloRequest) {
	info := agentapi.HelloResponse{ProtocolVersion: agentapi.ProtocolVersion, BootPhases: bootPhases.list()}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		info.KernelRelease = unix.ByteSliceToString(uts.Release[:])
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		info.BootID = strings.TrimSpace(string(b))
	}
	if req.ProtocolVersion != agentapi.ProtocolVersion {
		s.respond(w, agentapi.Response{
			Code:  agentapi.CodeVersion,
			Error: fmt.Sprintf("host speaks protocol version %d, guest agent speaks %d", req.ProtocolVersion, agentapi.ProtocolVersion),
			Hello: &info,
		})
		return
	}
	s.respond(w, agentapi.Response{OK: true, Hello: &info})
}

func (s *Server) health(w io.Writer) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		s.respondErr(w, agentapi.CodeInternal, fmt.Errorf("sysinfo: %w", err))
		return
	}
	s.respond(w, agentapi.Response{OK: true, Health: &agentapi.HealthResponse{Uptime: time.Duration(si.Uptime) * time.Second}})
}

func (s *Server) setup(ctx context.Context, w io.Writer, req *agentapi.SetupRequest) {
	if s.cfg.Setup == nil {
		s.respondErr(w, agentapi.CodeUnsupported, errors.New("setup is not supported by this agent"))
		return
	}
	s.lifeMu.Lock()
	var err error
	if s.stopping {
		err = errStopping
	} else {
		err = s.cfg.Setup(ctx, req)
	}
	s.lifeMu.Unlock()
	if errors.Is(err, errStopping) {
		s.respondErr(w, errStopping.code, err)
		return
	}
	if err != nil {
		s.log.Error("setup", "err", err)
		s.respondErr(w, codeOf(err), err)
		return
	}
	s.respond(w, agentapi.Response{OK: true})
}

func (s *Server) shutdown(stream net.Conn) {
	if s.cfg.PowerOff == nil {
		s.respondErr(stream, agentapi.CodeUnsupported, errors.New("shutdown is not supported by this agent"))
		return
	}
	// Wait for setups and copies in progress; refuse new ones from here.
	s.lifeMu.Lock()
	s.stopping = true
	s.lifeMu.Unlock()
	s.respond(stream, agentapi.Response{OK: true})
	stream.Close()
	s.log.Info("shutdown requested")
	go s.cfg.PowerOff()
}

func (s *Server) copyIn(stream net.Conn, req *agentapi.CopyInRequest) {
	dr := agentapi.NewDataReader(stream)
	var err error
	if !strings.HasPrefix(req.Path, "/") {
		err = fmt.Errorf("copy-in destination %q is not an absolute path", req.Path)
	} else {
		err = s.whileUp(func() error {
			return archive.Extract(dr, req.Path, archive.Options{PreserveOwner: os.Getuid() == 0, KeepSetID: true, FollowDestLinks: true})
		})
	}
	// Read up to DataEnd even after a failure so the host's writes finish.
	if derr := dr.Drain(); derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		s.log.Warn("copy-in", "path", req.Path, "err", err)
		code := codeOf(err)
		if !strings.HasPrefix(req.Path, "/") {
			code = agentapi.CodeInvalid
		}
		s.respondErr(stream, code, err)
		return
	}
	s.respond(stream, agentapi.Response{OK: true})
}

func (s *Server) copyOut(stream net.Conn, req *agentapi.CopyOutRequest) {
	if !strings.HasPrefix(req.Path, "/") {
		s.respondErr(stream, agentapi.CodeInvalid, fmt.Errorf("copy-out source %q is not an absolute path", req.Path))
		return
	}
	s.lifeMu.RLock()
	defer s.lifeMu.RUnlock()
	if s.stopping {
		s.respondErr(stream, errStopping.code, errStopping)
		return
	}
	src, err := archive.FollowParents(req.Path)
	var fi os.FileInfo
	if err == nil {
		fi, err = os.Lstat(strings.TrimSuffix(src, "/."))
	}
	if err != nil {
		s.respondErr(stream, codeOf(err), fmt.Errorf("could not find the file %s in the guest: %w", req.Path, err))
		return
	}
	if err := archive.CheckCopyable(req.Path, fi.Mode()); err != nil {
		s.respondErr(stream, agentapi.CodeInvalid, err)
		return
	}
	s.respond(stream, agentapi.Response{OK: true})
	// The host reads to the end and only then closes. Its close (or
	// anything it sends) before that means it has gone: the stream is
	// closed, so the write below fails instead of waiting for a reader
	// forever, holding lifeMu and with it the power-off.
	go func() {
		_, _ = io.Copy(io.Discard, stream)
		stream.Close()
	}()
	fw := agentapi.NewFrameWriter(stream)
	dw := agentapi.NewDataWriter(fw)
	if err := archive.Write(dw, src); err != nil {
		s.log.Warn("copy-out", "path", req.Path, "err", err)
		_ = fw.WriteJSON(agentapi.FrameError, agentapi.ErrorInfo{Code: codeOf(err), Message: err.Error()})
		return
	}
	if err := dw.Close(); err != nil {
		s.log.Warn("copy-out", "path", req.Path, "err", err)
	}
}
