package lifecycle

import (
	"context"
	"errors"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/sandbox"
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
	stream, err := m.stream(ctx, sb, req.Session)
	if err != nil {
		return agentclient.ExitStatus{}, err
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
