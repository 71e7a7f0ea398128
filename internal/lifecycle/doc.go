// Package lifecycle is what a sandbox goes through, for every front end
// (the CLI today; the daemon's API next): taking its lock (honouring
// ctx), starting its VM through a supervisor and stopping it, its state
// as the supervisor recorded it. Requests are plain data; progress and
// warnings come out as Events the front end renders or streams; failures
// are *Error values with a Code the CLI maps to its messages and hints
// and an API to its status codes.
//
// A start is prepared by the front end's Prepare (boot assets and
// snapshot, still in internal/cli) and launched by Launch: a supervisor
// process of its own (supervisor.Launch) or, for tests and in-process
// use, InProcess with any vm.Backend (the fake one runs every path here
// without a VM).
package lifecycle
