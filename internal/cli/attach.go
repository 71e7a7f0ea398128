package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// session describes one process to run in a sandbox and attach to.
type session struct {
	argv  []string
	env   []string
	dir   string
	user  string
	tty   bool
	stdin bool
}

// attach runs s in sb (which must be running) and returns its exit code.
// With tty and stdin the local terminal goes raw (Ctrl-C travels as a
// byte to the guest's terminal) and follows window-size changes;
// otherwise SIGINT, SIGTERM and SIGHUP received here are sent to the
// process. A VM that stopped between the start and the attach (its last
// session ended just then) is started again, as mode says, once.
func (e *env) attach(ctx context.Context, sb *sandbox.Sandbox, s session, mode startMode) (int, error) {
	stream, err := supervisor.Client(e.store, sb).OpenStream(ctx, true)
	if errors.Is(err, controlapi.ErrNotReady) || errors.Is(err, controlapi.ErrUnavailable) {
		if rerr := e.ensureRunning(ctx, sb, mode); rerr != nil {
			return 0, rerr
		}
		stream, err = supervisor.Client(e.store, sb).OpenStream(ctx, true)
	}
	if err != nil {
		return 0, userErr(err, "check it with `sbx ls` and `sbx logs "+sb.Config.Name+"`", "cannot reach sandbox %s", sb.Config.Name)
	}
	defer stream.Close()

	req := agentapi.ExecRequest{Argv: s.argv, Env: s.env, Dir: s.dir, User: s.user, TTY: s.tty}
	eio := agentclient.ExecIO{Stdout: e.stdout, Stderr: e.stderr}
	if s.stdin {
		eio.Stdin = e.stdin
	}
	sigs := make(chan syscall.Signal, 4)
	eio.Signals = sigs
	local := make(chan os.Signal, 4)
	if s.tty {
		fd, isTerm := terminalFd(e.stdin)
		if isTerm {
			if cols, rows, err := term.GetSize(fd); err == nil {
				req.Rows, req.Cols = uint16(rows), uint16(cols)
			}
			req.Term = os.Getenv("TERM")
			if s.stdin {
				old, err := term.MakeRaw(fd)
				if err == nil {
					defer term.Restore(fd, old)
				}
			}
			resize := make(chan agentclient.Size, 1)
			eio.Resize = resize
			winch := make(chan os.Signal, 1)
			signal.Notify(winch, syscall.SIGWINCH)
			defer signal.Stop(winch)
			done := make(chan struct{})
			defer close(done)
			go func() {
				for {
					select {
					case <-done:
						return
					case <-winch:
						if cols, rows, err := term.GetSize(fd); err == nil {
							select {
							case resize <- agentclient.Size{Rows: uint16(rows), Cols: uint16(cols)}:
							default:
							}
						}
					}
				}
			}()
		}
	}
	if s.tty && s.stdin {
		signal.Notify(local, syscall.SIGTERM, syscall.SIGHUP)
	} else {
		signal.Notify(local, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	}
	defer signal.Stop(local)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case sig := <-local:
				if ss, ok := sig.(syscall.Signal); ok {
					select {
					case sigs <- ss:
					default:
					}
				}
			}
		}
	}()

	// The session outlives a cancelled command context: signals are
	// forwarded to the process instead of tearing the stream down.
	st, err := agentclient.Exec(context.WithoutCancel(ctx), stream, req, eio)
	if err != nil {
		if se, ok := errors.AsType[*agentclient.StartError](err); ok {
			return 0, &UserError{Msg: se.Error(), Code: se.ExitCode}
		}
		return 0, e.mgr.Lost(sb, err)
	}
	return st.Code, nil
}

// terminalFd returns the file descriptor of r when it is a terminal.
func terminalFd(r io.Reader) (int, bool) {
	f, ok := r.(*os.File)
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}
