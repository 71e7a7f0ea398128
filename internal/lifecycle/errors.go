package lifecycle

import (
	"errors"
	"fmt"
	"syscall"
)

// Code classifies an Error for a front end: the CLI's hints, an API's
// status codes.
type Code string

// Codes of Error.
const (
	// NotFound: no such sandbox (or it was removed while a call waited).
	NotFound Code = "not_found"
	// Conflict: the request clashes with what exists (Field names what).
	Conflict Code = "conflict"
	// Busy: the sandbox is starting or stopping and did not settle.
	Busy Code = "busy"
	// Invalid: the request or the sandbox's configuration is refused.
	Invalid Code = "invalid"
	// Failed: the VM or its supervisor did not start or stop.
	Failed Code = "failed"
	// Internal: the state folder could not be read or written.
	Internal Code = "internal"
)

// Error is a lifecycle failure: Msg says what happened, Hint what to do
// (for people; an API may pass it on), Err the cause.
type Error struct {
	Code    Code
	Sandbox string
	// Field names the request field a Conflict or Invalid is about.
	Field string
	Msg   string
	Hint  string
	Err   error
}

func (e *Error) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches an *Error of the same Code: errors.Is(err, ErrNotFound).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == "" && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrNotFound = &Error{Code: NotFound}
	ErrConflict = &Error{Code: Conflict}
	ErrBusy     = &Error{Code: Busy}
	ErrInvalid  = &Error{Code: Invalid}
	ErrFailed   = &Error{Code: Failed}
)

func newErr(code Code, sb string, cause error, hint, format string, args ...any) *Error {
	e := &Error{Code: code, Sandbox: sb, Msg: fmt.Sprintf(format, args...), Hint: hint, Err: cause}
	// What the machine refused is said, not only shown with --debug: a
	// full disk, a read-only or unwritable folder.
	if errno, ok := errors.AsType[syscall.Errno](cause); ok && code == Internal {
		switch errno {
		case syscall.ENOSPC, syscall.EDQUOT:
			e.Msg += ": " + errno.Error()
			e.Hint = "free disk space (`df -h`), then try again"
		case syscall.EROFS, syscall.EACCES, syscall.EPERM:
			e.Msg += ": " + errno.Error()
		}
	}
	return e
}

// AsError returns err's *Error, if it has one.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
