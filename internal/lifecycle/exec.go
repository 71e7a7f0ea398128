package lifecycle

import (
	"cmp"
	"context"
	"errors"
	"strings"

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
	if err := checkExec(req.ExecRequest); err != nil {
		return agentclient.ExitStatus{}, err
	}
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
			e.Field = cmp.Or(se.Field, "argv")
			return agentclient.ExitStatus{Code: se.ExitCode}, e
		}
		// A stop while it ran is said as such, not as a crash.
		if cur, serr := m.Store.Status(sb); serr == nil && (cur.Status == sandbox.StatusStopping || cur.Status == sandbox.StatusStopped) {
			return st, newErr(Failed, name, err, "start it again and rerun the command", "sandbox %s was stopped while the command ran", name)
		}
		return st, newErr(Failed, name, err, "see `sbx logs "+name+"`", "lost the connection to sandbox %s", name)
	}
	return st, nil
}

// checkExec refuses what no process can be given: a NUL byte in its
// arguments, environment, folder, user or terminal type.
func checkExec(r agentapi.ExecRequest) error {
	bad := func(field string) error {
		e := newErr(Invalid, "", nil, "", "%s holds a NUL byte", field)
		e.Field = field
		return e
	}
	for _, a := range r.Argv {
		if strings.ContainsRune(a, 0) {
			return bad("argv")
		}
	}
	for _, kv := range r.Env {
		if strings.ContainsRune(kv, 0) {
			return bad("env")
		}
	}
	for field, v := range map[string]string{"dir": r.Dir, "user": r.User, "term": r.Term} {
		if strings.ContainsRune(v, 0) {
			return bad(field)
		}
	}
	return nil
}
