package lifecycle

import (
	"cmp"
	"context"
	"errors"
	"strings"
	"time"

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
		return st, m.Lost(sb, err)
	}
	return st, nil
}

// Lost is the error for a session whose connection to sandbox sb broke
// (err): a stop is said as such, and a crash its supervisor records
// within a moment is said with its reason, not as a lost connection.
func (m *Manager) Lost(sb *sandbox.Sandbox, err error) error {
	name := sb.Config.Name
	deadline := time.Now().Add(2 * time.Second)
	for {
		cur, serr := m.Store.Status(sb)
		if serr == nil {
			switch cur.Status {
			case sandbox.StatusStopping, sandbox.StatusStopped:
				return newErr(Failed, name, err, "start it again and rerun the command", "sandbox %s was stopped while the command ran", name)
			case sandbox.StatusCrashed:
				return newErr(Failed, name, err, "see `sbx logs "+name+"`", "sandbox %s stopped while the command ran: %s", name, cur.Reason)
			}
		}
		if time.Now().After(deadline) {
			return newErr(Failed, name, err, "see `sbx logs "+name+"`", "lost the connection to sandbox %s", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
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
