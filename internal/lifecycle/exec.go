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
	if err := CheckExec(req.ExecRequest); err != nil {
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

// CheckExec refuses what no process can be given: a NUL byte in its
// arguments, environment, folder, user or terminal type, or an
// environment entry that is no KEY=VALUE (the twelfth review found
// "NOEQ", "=x" and "A B=1" passed on).
func CheckExec(r agentapi.ExecRequest) error {
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
		if k, _, ok := strings.Cut(kv, "="); !ok || !envName(k) {
			e := newErr(Invalid, "", nil, "give each as KEY=VALUE, KEY not empty and without spaces", "environment entry %.80q is no KEY=VALUE", kv)
			e.Field = "env"
			return e
		}
	}
	for field, v := range map[string]string{"dir": r.Dir, "user": r.User, "term": r.Term} {
		if strings.ContainsRune(v, 0) {
			return bad(field)
		}
	}
	return nil
}

// envName says whether k can name an environment variable: not empty,
// no space or control character ('=' cannot be in it: the entry is cut
// at the first).
func envName(k string) bool {
	return k != "" && !strings.ContainsFunc(k, func(r rune) bool { return r <= ' ' || r == 0x7f })
}

// NotRunning is the Conflict on "state" of a request that needs sb
// running.
func NotRunning(sb *sandbox.Sandbox) *Error {
	e := newErr(Conflict, sb.Config.Name, nil, "start it first", "sandbox %s is not running", sb.Config.Name)
	e.Field = "state"
	return e
}
