package lifecycle

import (
	"context"
	"errors"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// ExecRequest is a process to run in a running sandbox; Session makes it
// a session (an attached `sbx run`: the VM of a sandbox started for
// sessions stops when its last one ends).
type ExecRequest struct {
	agentapi.ExecRequest
	Session bool
}

// Exec runs req in sb and returns its exit status once it ends; its
// streams are io's. A sandbox that is not running is a Conflict on
// "state" (start it first).
func (m *Manager) Exec(ctx context.Context, sb *sandbox.Sandbox, req ExecRequest, io agentclient.ExecIO) (agentclient.ExitStatus, error) {
	name := sb.Config.Name
	stream, err := supervisor.Client(m.Store, sb).OpenStream(ctx, req.Session)
	if errors.Is(err, controlapi.ErrNotReady) || errors.Is(err, controlapi.ErrUnavailable) {
		e := newErr(Conflict, name, err, "start it first", "sandbox %s is not running", name)
		e.Field = "state"
		return agentclient.ExitStatus{}, e
	}
	if err != nil {
		return agentclient.ExitStatus{}, newErr(Failed, name, err, "check it with `sbx ls` and `sbx logs "+name+"`", "cannot reach sandbox %s", name)
	}
	defer stream.Close()
	st, err := agentclient.Exec(ctx, stream, req.ExecRequest, io)
	if err != nil {
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
		// The command could not start (no such program, user or folder):
		// the shell's 127, and the guest's reason.
		var se *agentclient.StartError
		if errors.As(err, &se) {
			e := newErr(Invalid, name, err, "", "%s", se.Error())
			e.Field = "argv"
			return agentclient.ExitStatus{Code: se.ExitCode}, e
		}
		return st, newErr(Failed, name, err, "see `sbx logs "+name+"`", "lost the connection to sandbox %s", name)
	}
	return st, nil
}
