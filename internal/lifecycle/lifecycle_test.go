package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
	"github.com/sbx-dev/sbx/internal/template"
	"github.com/sbx-dev/sbx/internal/vm"
	"github.com/sbx-dev/sbx/internal/vm/vmtest"
)

// The lifecycle in process: supervisors run in the test binary with the
// fake VM backend (each VM the real guest agent on a pipe), so start,
// stop, crash, failure and concurrency are tested without QEMU.

type fixture struct {
	m       *Manager
	sb      *sandbox.Sandbox
	backend *vmtest.Backend
	events  []Event
	mu      sync.Mutex
	base    string
	logs    bytes.Buffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	// Short: the control sockets live below it.
	base, err := os.MkdirTemp("", "sbx-lc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	dirs := paths.Dirs{Data: filepath.Join(base, "d"), Config: filepath.Join(base, "c"), Cache: filepath.Join(base, "k"), Runtime: filepath.Join(base, "r")}
	u, _ := user.Current()
	f := &fixture{backend: &vmtest.Backend{User: u.Username}, base: base}
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &f.logs, mu: &f.mu}, nil))
	f.m = New(dirs, log)
	f.m.Launch = InProcess(f.backend, log)
	f.m.Events = func(ev Event) {
		f.mu.Lock()
		f.events = append(f.events, ev)
		f.mu.Unlock()
	}
	cfg := sandbox.Config{ID: sandbox.NewID(), Name: "fake", Agent: "shell", Workspaces: []sandbox.Workspace{{Path: t.TempDir()}}, UID: 1000, GID: 1000}
	if f.sb, err = f.m.Store.Create(cfg); err == nil {
		err = f.m.Store.Commit(f.sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := f.m.Stop(ctx, f.sb); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("clean-up stop: %v", err)
		}
		if t.Failed() {
			f.mu.Lock()
			t.Logf("supervisor log:\n%s", f.logs.String())
			f.mu.Unlock()
		}
	})
	return f
}

type syncWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (f *fixture) req(mode StartMode) StartRequest {
	return StartRequest{Mode: mode, Prepare: func(context.Context, *sandbox.Sandbox) (supervisor.Boot, error) {
		return supervisor.Boot{Accel: "tcg", CPUs: 1, MAC: sandbox.NewMAC(), ConfigDir: filepath.Join(f.base, "c")}, nil
	}}
}

func (f *fixture) status(t *testing.T) sandbox.State {
	t.Helper()
	st, err := f.m.Store.Status(f.sb)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (f *fixture) eventsOf(kind EventKind) []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Event
	for _, ev := range f.events {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// TestStartStop: a start boots one VM and records it running; a second
// start finds it running; a stop shuts it down and records stopped.
func TestStartStop(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	if err := f.m.Start(ctx, f.sb, f.req(InBackground)); err != nil {
		t.Fatal(err)
	}
	if st := f.status(t); st.Status != sandbox.StatusRunning || !st.Detached {
		t.Fatalf("after start: %+v", st)
	}
	if _, err := os.Stat(f.sb.Path(sandbox.BootedFile)); err != nil {
		t.Errorf("the start was not recorded: %v", err)
	}
	if err := f.m.Start(ctx, f.sb, f.req(InBackground)); err != nil {
		t.Fatal(err)
	}
	if n := len(f.backend.Instances()); n != 1 {
		t.Errorf("%d VMs after two starts, want 1", n)
	}
	if len(f.eventsOf(Detail)) == 0 {
		t.Error("no detail event (cold boot)")
	}
	if err := f.m.Stop(ctx, f.sb); err != nil {
		t.Fatal(err)
	}
	if st := f.status(t); st.Status != sandbox.StatusStopped {
		t.Errorf("after stop: %+v", st)
	}
}

// TestStartAfterCrash: a VM that dies leaves the sandbox crashed or
// stopped; the next start boots a new VM, saying so when it had crashed.
func TestStartAfterCrash(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	if err := f.m.Start(ctx, f.sb, f.req(InBackground)); err != nil {
		t.Fatal(err)
	}
	f.backend.Instances()[0].Crash()
	deadline := time.Now().Add(10 * time.Second)
	for f.status(t).Status == sandbox.StatusRunning {
		if time.Now().After(deadline) {
			t.Fatal("still running 10 s after its VM died")
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := f.status(t)
	if err := f.m.Start(ctx, f.sb, f.req(InBackground)); err != nil {
		t.Fatal(err)
	}
	if n := len(f.backend.Instances()); n != 2 || f.status(t).Status != sandbox.StatusRunning {
		t.Errorf("%d VMs, status %s; want a second VM running", n, f.status(t).Status)
	}
	if before.Status == sandbox.StatusCrashed && len(f.eventsOf(Notice)) == 0 {
		t.Error("no notice of the crash")
	}
}

// TestConcurrentStarts: two starts at once boot one VM; both return
// with it running.
func TestConcurrentStarts(t *testing.T) {
	f := newFixture(t)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = f.m.Start(t.Context(), f.sb, f.req(InBackground)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("start %d: %v", i, err)
		}
	}
	if n := len(f.backend.Instances()); n != 1 {
		t.Errorf("%d VMs, want 1", n)
	}
}

// TestLockHonoursContext: a start waiting for another call's lock gives
// up when its ctx ends (Ctrl-C on a second `sbx run`).
func TestLockHonoursContext(t *testing.T) {
	f := newFixture(t)
	unlock, err := f.m.Lock(t.Context(), f.sb)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.m.Start(ctx, f.sb, f.req(InBackground)) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("start under a held lock: %v, want the deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("start still waiting 5 s after its ctx ended")
	}
	if n := len(f.backend.Instances()); n != 0 {
		t.Errorf("%d VMs started", n)
	}
}

// failing is a backend whose VMs cannot be made.
type failing struct{ vmtest.Backend }

func (*failing) New(context.Context, vm.Config, *slog.Logger) (vm.Instance, error) {
	return nil, errors.New("no VM today")
}

// TestStartFailures: a failed preparation comes back as it was; a VM that
// cannot start is a Failed error naming the sandbox, and the sandbox is
// not left running; a removed sandbox is NotFound.
func TestStartFailures(t *testing.T) {
	f := newFixture(t)
	bad := &Error{Code: Invalid, Msg: "no kernel"}
	req := f.req(InBackground)
	req.Prepare = func(context.Context, *sandbox.Sandbox) (supervisor.Boot, error) { return supervisor.Boot{}, bad }
	if err := f.m.Start(t.Context(), f.sb, req); !errors.Is(err, ErrInvalid) {
		t.Errorf("failed prepare: %v", err)
	}
	f.m.Launch = InProcess(&failing{}, f.m.Log)
	err := f.m.Start(t.Context(), f.sb, f.req(InBackground))
	if e, ok := AsError(err); !ok || e.Code != Failed || e.Sandbox != "fake" {
		t.Errorf("failed VM: %#v", err)
	}
	if st := f.status(t); st.Status == sandbox.StatusRunning {
		t.Errorf("left %s", st.Status)
	}
	if err := f.m.Store.Remove(f.sb); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Start(t.Context(), f.sb, f.req(InBackground)); !errors.Is(err, ErrNotFound) {
		t.Errorf("start of a removed sandbox: %v", err)
	}
	if _, err := f.m.Get("fake"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a removed sandbox: %v", err)
	}
}

// TestRemove: a running sandbox is a Conflict on "force" without it, and
// with it is stopped and removed, its sandbox rules with it; then it is
// NotFound.
func TestRemove(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	if err := f.m.Start(ctx, f.sb, f.req(InBackground)); err != nil {
		t.Fatal(err)
	}
	err := f.m.Remove(ctx, f.sb, RemoveRequest{})
	if e, ok := AsError(err); !ok || e.Code != Conflict || e.Field != "force" {
		t.Fatalf("remove of a running sandbox: %#v", err)
	}
	if f.status(t).Status != sandbox.StatusRunning {
		t.Fatal("the refused remove stopped it")
	}
	if err := f.m.Remove(ctx, f.sb, RemoveRequest{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.m.Store.DirOf(f.sb.Config.ID)); !os.IsNotExist(err) {
		t.Errorf("its folder is still there: %v", err)
	}
	if _, err := f.m.Get(f.sb.Config.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after remove: %v", err)
	}
	if err := f.m.Remove(ctx, f.sb, RemoveRequest{Force: true}); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
}

// TestCreate: a sandbox is made as one transaction, with its rules and
// ports; a taken name is a Conflict on "name"; a failed create leaves no
// folder and no rule behind.
func TestCreate(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("no qemu-img")
	}
	f := newFixture(t)
	img := filepath.Join(f.base, "template.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 8<<20)
	tmpl := template.Template{Name: "t", ID: "0123456789abcdef", Image: img}
	deny, _ := policy.ParseResource("blocked.example")
	req := CreateRequest{
		Config:   sandbox.Config{Name: "made", Agent: "shell", Workspaces: f.sb.Config.Workspaces, UID: 1000, GID: 1000, DiskBytes: 16 << 20},
		Template: tmpl, Cold: true,
		Rules: []Rule{{Action: policy.Deny, Resource: deny, Origin: "user"}},
		Ports: []sandbox.Port{{HostIP: "127.0.0.1", HostPort: 18080, SandboxPort: 80}},
	}
	sb, err := f.m.Create(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := f.m.Get("made"); err != nil || got.Config.ID != sb.Config.ID || got.Config.Template.ID != tmpl.ID {
		t.Fatalf("Get: %+v %v", got, err)
	}
	if ports, err := f.m.Store.ReadPorts(sb); err != nil || len(ports) != 1 {
		t.Errorf("ports %v %v", ports, err)
	}
	rulesOf := func(id string) int {
		pf, err := policy.NewStore(f.m.Dirs.Config).Load()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range pf.Rules {
			if r.Scope == id {
				n++
			}
		}
		return n
	}
	if n := rulesOf(sb.Config.ID); n != 1 {
		t.Errorf("%d rules of the new sandbox, want 1", n)
	}
	if _, err := f.m.Create(t.Context(), req); !errors.Is(err, ErrConflict) {
		t.Errorf("second create of the name: %v", err)
	} else if e, _ := AsError(err); e.Field != "name" {
		t.Errorf("conflict on %q, want name", e.Field)
	}
	// A template image that is gone: the disk fails after the rules went
	// in, and everything is taken out again.
	req.Config.Name, req.Config.ID = "broken", "fedcba9876543210"
	req.Template.Image = filepath.Join(f.base, "missing.img")
	if _, err := f.m.Create(t.Context(), req); err == nil {
		t.Fatal("create on a missing template image worked")
	}
	if _, err := f.m.Get("broken"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the failed sandbox is findable: %v", err)
	}
	if n := rulesOf("fedcba9876543210"); n != 0 {
		t.Errorf("%d rules left by the failed create", n)
	}
	entries, _ := os.ReadDir(filepath.Join(f.m.Dirs.Data, "sandboxes"))
	for _, en := range entries {
		if strings.Contains(en.Name(), "fedcba9876543210") {
			t.Errorf("left %s", en.Name())
		}
	}
}

// TestPorts: on a stopped sandbox ports are recorded for its next start,
// on a running one published by its supervisor at once; an unpublish
// that matches nothing is a Conflict on "ports".
func TestPorts(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	p := sandbox.Port{HostIP: "127.0.0.1", HostPort: 0, SandboxPort: 80}
	got, err := f.m.Ports(ctx, f.sb, PortsRequest{Publish: []sandbox.Port{p}})
	if err != nil || len(got) != 1 {
		t.Fatalf("publish on a stopped sandbox: %v %v", got, err)
	}
	_, err = f.m.Ports(ctx, f.sb, PortsRequest{Unpublish: []sandbox.Port{{HostIP: "127.0.0.1", HostPort: 1, SandboxPort: 22}}})
	if e, ok := AsError(err); !ok || e.Code != Conflict || e.Field != "ports" {
		t.Errorf("unpublish of nothing: %#v", err)
	}
	if err := f.m.Start(ctx, f.sb, f.req(InBackground)); err != nil {
		t.Fatal(err)
	}
	got, err = f.m.Ports(ctx, f.sb, PortsRequest{})
	if err != nil || len(got) != 1 || got[0].HostPort == 0 {
		t.Errorf("ports of the running sandbox: %v %v, want the recorded one with its host port chosen", got, err)
	}
}

// TestExec: a command runs in a running sandbox with its output and exit
// code; in a stopped one it is a Conflict on "state".
func TestExec(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	req := ExecRequest{ExecRequest: agentapi.ExecRequest{Argv: []string{"sh", "-c", "echo hi; exit 3"}}}
	if _, err := f.m.Exec(ctx, f.sb, req, agentclient.ExecIO{}); !errors.Is(err, ErrConflict) {
		t.Errorf("exec in a stopped sandbox: %v", err)
	}
	if err := f.m.Start(ctx, f.sb, f.req(InBackground)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := f.m.Exec(ctx, f.sb, req, agentclient.ExecIO{Stdout: &out})
	if err != nil || st.Code != 3 || out.String() != "hi\n" {
		t.Errorf("exec: code %d, %q, %v", st.Code, out.String(), err)
	}
}

// Every start refuses a workspace that holds sbx's own folders, whoever
// asks (the CLI, the daemon, E2B), even when the config was written
// before the check or edited since; nothing is launched.
func TestStartRefusesStateWorkspace(t *testing.T) {
	f := newFixture(t)
	f.sb.Config.Workspaces = []sandbox.Workspace{{Path: f.base}}
	if err := f.m.Start(t.Context(), f.sb, f.req(InBackground)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("start on the folder holding the store: %v", err)
	}
	if n := len(f.backend.Instances()); n != 0 {
		t.Errorf("%d VMs were made", n)
	}
}

// Found by the eighth outside review: a sandbox whose state file or
// config was damaged could not be removed by any command. With Force,
// a damaged state goes; a damaged config is removed by its folder.
func TestRemoveDamaged(t *testing.T) {
	f := newFixture(t)
	if err := os.WriteFile(f.sb.Path(sandbox.StateFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Remove(t.Context(), f.sb, RemoveRequest{}); err == nil {
		t.Fatal("removed without force")
	} else if le, ok := AsError(err); !ok || !strings.Contains(le.Hint, "sbx rm -f") {
		t.Errorf("no way out offered: %v", err)
	}
	if err := f.m.Remove(t.Context(), f.sb, RemoveRequest{Force: true}); err != nil {
		t.Fatalf("rm -f of a damaged state: %v", err)
	}
	if _, err := os.Stat(f.sb.Dir); !os.IsNotExist(err) {
		t.Errorf("its folder stays: %v", err)
	}

	g := newFixture(t)
	if err := os.WriteFile(g.sb.Path(sandbox.ConfigFile), []byte(`{"version":1,`), 0o600); err != nil {
		t.Fatal(err)
	}
	damaged := g.m.Damaged()
	if len(damaged) != 1 || damaged[0].Config.ID != g.sb.Config.ID {
		t.Fatalf("damaged: %+v", damaged)
	}
	if err := g.m.Remove(t.Context(), damaged[0], RemoveRequest{Force: true}); err != nil {
		t.Fatalf("rm of a damaged config: %v", err)
	}
	if _, err := os.Stat(g.sb.Dir); !os.IsNotExist(err) || len(g.m.Damaged()) != 0 {
		t.Errorf("its folder stays: %v", err)
	}
}

// Eighth review: the /v1 API took the E2B workspaces root (every E2B
// sandbox's workspace) as a workspace. One E2B sandbox's own folder
// inside it stays fine.
func TestCheckWorkspacesE2BRoot(t *testing.T) {
	f := newFixture(t)
	root := E2BWorkRoot(f.m.Dirs)
	if err := os.MkdirAll(filepath.Join(root, "e2b-one"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := f.m.CheckWorkspaces([]sandbox.Workspace{{Path: root}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("the root: %v", err)
	}
	if err := f.m.CheckWorkspaces([]sandbox.Workspace{{Path: filepath.Join(root, "e2b-one")}}); err != nil {
		t.Errorf("one sandbox's folder: %v", err)
	}
}
