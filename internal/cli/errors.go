package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/sbx-dev/sbx/internal/lifecycle"
)

// UserError is a failure a user can act on: what happened (Msg), what to do
// (Hint) and the underlying cause, which is shown only with --debug.
type UserError struct {
	Msg   string
	Hint  string
	Cause error
	// Code is the process exit code; 0 means 1.
	Code int
}

func (e *UserError) Error() string {
	if e.Cause != nil {
		return e.Msg + ": " + e.Cause.Error()
	}
	return e.Msg
}

func (e *UserError) Unwrap() error { return e.Cause }

// Message and HintText are what an API client gets of it (internal/daemon).
func (e *UserError) Message() string  { return e.Msg }
func (e *UserError) HintText() string { return e.Hint }

// userErr builds a UserError.
func userErr(cause error, hint, format string, args ...any) *UserError {
	return &UserError{Msg: fmt.Sprintf(format, args...), Hint: hint, Cause: cause}
}

// ExitError carries an exit code without a message: the exit status of a
// command that ran in a sandbox.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Render prints err for a person on w and returns the exit code. It is the
// single place that turns errors into text.
func Render(w io.Writer, err error, debug bool) int {
	if err == nil {
		return 0
	}
	// A message may carry what a guest wrote (a command's output, a
	// name): its control characters are shown escaped.
	if _, ok := w.(*terminalWriter); !ok {
		tw := &terminalWriter{w: w}
		defer tw.Flush()
		w = tw
	}
	if ee, ok := errors.AsType[*ExitError](err); ok {
		return ee.Code
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(w, "sbx: interrupted")
		return 130
	}
	if multi, ok := err.(interface{ Unwrap() []error }); ok {
		code := 0
		for _, e := range multi.Unwrap() {
			if c := Render(w, e, debug); c != 0 {
				code = c
			}
		}
		return code
	}
	code := 1
	if ue, ok := errors.AsType[*UserError](err); ok {
		fmt.Fprintf(w, "sbx: %s\n", ue.Msg)
		if ue.Hint != "" {
			fmt.Fprintf(w, "hint: %s\n", ue.Hint)
		}
		if debug && ue.Cause != nil {
			fmt.Fprintf(w, "cause: %v\n", ue.Cause)
		}
		if ue.Code != 0 {
			code = ue.Code
		}
		return code
	}
	if le, ok := lifecycle.AsError(err); ok {
		// The lifecycle's errors carry their message and hint; every
		// code exits 1.
		fmt.Fprintf(w, "sbx: %s\n", le.Error())
		if le.Hint != "" {
			fmt.Fprintf(w, "hint: %s\n", le.Hint)
		}
		if debug && le.Err != nil {
			fmt.Fprintf(w, "cause: %v\n", le.Err)
		}
		return code
	}
	fmt.Fprintf(w, "sbx: %v\n", err)
	return code
}

func (e *env) printf(w interface{ Write([]byte) (int, error) }, format string, args ...any) {
	fmt.Fprintf(w, format, args...)
}
