package lifecycle

import "time"

// EventKind says what an Event reports.
type EventKind string

// Kinds of Event.
const (
	// Notice: something a person should read (a crashed sandbox restarted).
	Notice EventKind = "notice"
	// Warning: something went less well than asked, and the call went on.
	Warning EventKind = "warning"
	// Phase: a boot phase finished (Phase, Duration).
	Phase EventKind = "phase"
	// Detail: how the call went about it (the share transport, a
	// snapshot resumed): for --debug and logs.
	Detail EventKind = "detail"
)

// Event is progress or a warning of a call, for the front end to render
// (the CLI) or stream (the API).
type Event struct {
	Kind     EventKind     `json:"kind"`
	Sandbox  string        `json:"sandbox"`
	Text     string        `json:"text,omitempty"`
	Phase    string        `json:"phase,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
}

func (m *Manager) emit(ev Event) {
	if m.Events != nil {
		m.Events(ev)
	}
}
