package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"github.com/sbx-dev/sbx/api/agentapi"
)

// ExitStatus is how a guest process ended.
type ExitStatus = agentapi.ExitStatus

// Size is a terminal size.
type Size = agentapi.Size

// ExecIO connects a guest process to host-side streams. Every field is
// optional.
type ExecIO struct {
	// Stdin is copied to the process until it returns io.EOF (or another
	// error), then the process's stdin is closed. nil closes stdin at once.
	// A Read that blocks past the process's exit leaves its goroutine
	// running until the Read returns; it then exits without writing.
	Stdin io.Reader
	// Stdout receives the process's stdout (its terminal output with a
	// TTY); nil discards it.
	Stdout io.Writer
	// Stderr receives the process's stderr (nothing with a TTY); nil
	// discards it.
	Stderr io.Writer
	// Resize delivers terminal size changes (TTY only).
	Resize <-chan Size
	// Signals delivers signals for the process (its foreground process
	// group with a TTY, its process group without).
	Signals <-chan syscall.Signal
}

// StartError means the guest could not start the process. ExitCode follows
// the shell's convention: 127 when the executable (or user, or directory)
// was not found, 126 when it could not be executed.
type StartError struct {
	ExitCode int
	Code     agentapi.ErrorCode
	Message  string
	// Field is the request field at fault ("user", "dir"), "" for argv.
	Field string
}

// Error returns the guest's message.
func (e *StartError) Error() string { return e.Message }

// Exec starts req on stream (a fresh stream, nothing sent on it yet) and
// connects it to eio until the process exits. It returns the process's exit
// status with a nil error when the process ran, whatever its exit code. A
// process that could not start yields a *StartError (use errors.AsType);
// any other error is a transport or protocol failure, and the process's
// fate is unknown (the guest kills it when the stream breaks). Exec closes
// stream before returning; cancelling ctx closes it early, which makes the
// guest kill the process; Exec then returns the context's error (with the
// exit status, if the guest still reported one).
func Exec(ctx context.Context, stream io.ReadWriteCloser, req agentapi.ExecRequest, eio ExecIO) (ExitStatus, error) {
	defer stream.Close()
	name := "process"
	if len(req.Argv) > 0 {
		name = req.Argv[0]
	}
	stop := closeOnCancel(ctx, stream)
	defer stop()
	resp, err := roundTrip(stream, agentapi.Request{Op: agentapi.OpExec, Exec: &req})
	if err != nil {
		return ExitStatus{}, fmt.Errorf("exec %s: %w", name, ctxErr(ctx, err))
	}
	if !resp.OK {
		switch resp.Code {
		case agentapi.CodeNotFound:
			return ExitStatus{}, &StartError{ExitCode: 127, Code: resp.Code, Message: resp.Error, Field: resp.Field}
		case agentapi.CodePermission:
			return ExitStatus{}, &StartError{ExitCode: 126, Code: resp.Code, Message: resp.Error, Field: resp.Field}
		default:
			return ExitStatus{}, fmt.Errorf("exec %s: %w", name, resp.Err())
		}
	}

	fw := agentapi.NewFrameWriter(stream)
	done := make(chan struct{})
	var wg sync.WaitGroup
	if eio.Stdin == nil {
		// A process that exits at once may have closed the stream before
		// this frame arrives; the exit status read below decides, so a
		// failed write here is not an error.
		_ = fw.WriteFrame(agentapi.FrameStdinClose, nil)
	} else {
		// Not joined: Read may block forever (a terminal). See ExecIO.Stdin.
		go copyStdin(fw, eio.Stdin, done)
	}
	if eio.Resize != nil || eio.Signals != nil {
		wg.Go(func() { forwardControl(fw, eio.Resize, eio.Signals, done) })
	}
	defer func() {
		close(done)
		wg.Wait()
	}()

	stdout, stderr := orDiscard(eio.Stdout), orDiscard(eio.Stderr)
	for {
		t, p, err := agentapi.ReadFrame(stream)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("stream ended before the exit status: %w", io.ErrUnexpectedEOF)
			}
			return ExitStatus{}, fmt.Errorf("exec %s: %w", name, ctxErr(ctx, err))
		}
		switch t {
		case agentapi.FrameStdout:
			if _, err := stdout.Write(p); err != nil {
				stdout = io.Discard
			}
		case agentapi.FrameStderr:
			if _, err := stderr.Write(p); err != nil {
				stderr = io.Discard
			}
		case agentapi.FrameExit:
			var st ExitStatus
			if err := agentapi.DecodeJSON(t, p, &st); err != nil {
				return ExitStatus{}, fmt.Errorf("exec %s: %w", name, err)
			}
			if err := ctx.Err(); err != nil {
				// The guest killed the process because the stream was closed.
				return st, fmt.Errorf("exec %s: %w", name, err)
			}
			return st, nil
		case agentapi.FrameError:
			return ExitStatus{}, fmt.Errorf("exec %s: %w", name, agentapi.DecodeError(p))
		default:
			return ExitStatus{}, fmt.Errorf("exec %s: %w: %s", name, agentapi.ErrUnexpectedFrame, t)
		}
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func copyStdin(fw *agentapi.FrameWriter, r io.Reader, done <-chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		select {
		case <-done:
			return
		default:
		}
		if n > 0 {
			if werr := fw.WriteFrame(agentapi.FrameStdin, buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = fw.WriteFrame(agentapi.FrameStdinClose, nil)
			return
		}
	}
}

func forwardControl(fw *agentapi.FrameWriter, resize <-chan Size, sigs <-chan syscall.Signal, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case s, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			if fw.WriteFrame(agentapi.FrameResize, agentapi.EncodeSize(s)) != nil {
				return
			}
		case sig, ok := <-sigs:
			if !ok {
				sigs = nil
				continue
			}
			if fw.WriteFrame(agentapi.FrameSignal, agentapi.EncodeSignal(int(sig))) != nil {
				return
			}
		}
	}
}
