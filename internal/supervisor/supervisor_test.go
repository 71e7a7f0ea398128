package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/vm/vmtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	store   *sandbox.Store
	sb      *sandbox.Sandbox
	backend *vmtest.Backend
	sup     *Supervisor
	client  *controlapi.Client
	done    chan error
}

func start(t *testing.T, detached bool) *fixture {
	t.Helper()
	return startWith(t, detached, nil)
}

// startWith is start with a sandbox config changed by edit.
func startWith(t *testing.T, detached bool, edit func(*sandbox.Config)) *fixture {
	t.Helper()
	return startOpts(t, fixtureOpts{detached: detached, edit: edit})
}

type fixtureOpts struct {
	detached bool
	edit     func(*sandbox.Config)
	boot     func(*Boot)
	backend  *vmtest.Backend
}

func startOpts(t *testing.T, o fixtureOpts) *fixture {
	t.Helper()
	detached, edit := o.detached, o.edit
	base, err := os.MkdirTemp("", "sbx-sup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	dirs := paths.Dirs{Data: filepath.Join(base, "d"), Runtime: filepath.Join(base, "r")}
	store := sandbox.NewStore(dirs)
	ws := t.TempDir()
	cfg := sandbox.Config{ID: sandbox.NewID(), Name: "fake", Agent: "shell", Workspaces: []sandbox.Workspace{{Path: ws}}, UID: 1000, GID: 1000}
	if edit != nil {
		edit(&cfg)
	}
	sb, err := store.Create(cfg)
	if err == nil {
		err = store.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	b := Boot{Version: BootVersion, Accel: "tcg", Detached: detached, CPUs: 1, MAC: sandbox.NewMAC(), ConfigDir: filepath.Join(base, "config")}
	if o.boot != nil {
		o.boot(&b)
	}
	boot, _ := json.Marshal(b)
	if err := os.WriteFile(sb.Path(sandbox.BootFile), boot, 0o600); err != nil {
		t.Fatal(err)
	}
	u, _ := user.Current()
	backend := o.backend
	if backend == nil {
		backend = &vmtest.Backend{}
	}
	backend.User = u.Username
	f := &fixture{store: store, sb: sb, backend: backend, done: make(chan error, 1)}
	var logs bytes.Buffer
	f.sup, err = New(store, sb, slog.New(slog.NewTextHandler(&logs, nil)), Options{Backend: f.backend})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { f.done <- f.sup.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			t.Error("supervisor did not stop")
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s", logs.String())
		}
	})
	f.client = Client(store, sb)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := f.client.Status(t.Context())
		if err == nil && st.State == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not running: %+v %v", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return f
}

func (f *fixture) exec(t *testing.T, session bool, argv ...string) (string, int) {
	t.Helper()
	stream, err := f.client.OpenStream(t.Context(), session)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := agentclient.Exec(t.Context(), stream, agentapi.ExecRequest{Argv: argv}, agentclient.ExecIO{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), st.Code
}

// TestSessionEndStopsVM: a VM not started detached shuts down cleanly when
// its last session ends, and the state says stopped.
func TestSessionEndStopsVM(t *testing.T) {
	f := start(t, false)
	inst := f.backend.Instances()[0]
	if got := inst.Setups(); len(got) != 1 || got[0].Hostname != "fake" || got[0].UID != 1000 || len(got[0].Workspaces) != 1 || got[0].Workspaces[0].Tag != "ws0" || got[0].Network == nil || got[0].Network.Gateway != "192.168.127.1" {
		t.Errorf("setup request: %+v", got)
	}
	// A stream that is not a session does not keep the VM up or stop it.
	if out, code := f.exec(t, false, "echo", "cp-like"); out != "cp-like\n" || code != 0 {
		t.Fatalf("exec: %q %d", out, code)
	}
	if st, _ := f.client.Status(t.Context()); st.State != "running" {
		t.Fatalf("after a non-session stream: %s", st.State)
	}
	if out, code := f.exec(t, true, "sh", "-c", "echo hi; exit 3"); out != "hi\n" || code != 3 {
		t.Fatalf("exec: %q %d", out, code)
	}
	select {
	case err := <-f.done:
		f.done <- err
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("VM did not stop after the last session")
	}
	if st, _ := f.store.ReadState(f.sb); st.Status != sandbox.StatusStopped {
		t.Errorf("state %s, want stopped", st.Status)
	}
}

// TestDetachedSurvivesSessions: a detached VM keeps running after sessions
// and stops on request.
func TestDetachedSurvivesSessions(t *testing.T) {
	f := start(t, true)
	f.exec(t, true, "true")
	time.Sleep(100 * time.Millisecond)
	if st, _ := f.client.Status(t.Context()); st.State != "running" || st.Sessions != 0 {
		t.Fatalf("status %+v", st)
	}
	if err := f.client.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-f.done; err != nil {
		t.Fatal(err)
	}
	f.done <- nil
	if st, _ := f.store.ReadState(f.sb); st.Status != sandbox.StatusStopped {
		t.Errorf("state %s, want stopped", st.Status)
	}
}

// TestCrashIsRecorded: a VM that dies unasked is recorded as crashed with a
// reason.
func TestCrashIsRecorded(t *testing.T) {
	f := start(t, true)
	f.backend.Instances()[0].Crash()
	err := <-f.done
	f.done <- err
	if err == nil {
		t.Fatal("Run returned nil after a crash")
	}
	st, _ := f.store.ReadState(f.sb)
	if st.Status != sandbox.StatusCrashed || st.Reason == "" {
		t.Errorf("state %+v, want crashed with a reason", st)
	}
}

// TestRestoreFallsBackToColdBoot: a snapshot start that fails boots the
// VM cold, in the plain device layout, and the status carries a note the
// starting command prints; the guest got its identity either way.
func TestRestoreFallsBackToColdBoot(t *testing.T) {
	f := startOpts(t, fixtureOpts{
		backend: &vmtest.Backend{FailRestore: true},
		boot: func(b *Boot) {
			b.Restore = &Restore{Key: "k1", State: "/nonexistent/state", RAM: "/nonexistent/ram", Empty: t.TempDir(),
				Spec: snapshot.Spec{CPUs: 1, MemoryMiB: 2048, Accel: "tcg"}}
		},
	})
	insts := f.backend.Instances()
	if len(insts) != 2 {
		t.Fatalf("%d instances, want a failed restore and a cold boot", len(insts))
	}
	if c := insts[0].Config(); c.RestoreFrom != "/nonexistent/state" || c.MemoryFile != "/nonexistent/ram" || len(c.Shares) != snapshot.Shares {
		t.Errorf("restore config: %+v", c)
	}
	if c := insts[1].Config(); c.RestoreFrom != "" || c.MemoryFile != "" || len(c.Shares) != 1 || c.Monitor == "" {
		t.Errorf("cold config: %+v", c)
	}
	st, err := f.client.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Notes) != 1 || !strings.Contains(st.Notes[0], "booted cold instead") {
		t.Errorf("notes %q", st.Notes)
	}
	setups := insts[1].Setups()
	if len(setups) != 1 || setups[0].Identity == nil || len(setups[0].Identity.MachineID) != 32 || len(setups[0].Identity.Seed) != 64 || setups[0].Identity.TimeUnixNano == 0 {
		t.Errorf("setup identity: %+v", setups)
	}
}

// TestGuestPhases: the guest's boot phases from hello join the
// supervisor's list as guest:NAME, rounded to milliseconds.
func TestGuestPhases(t *testing.T) {
	got := guestPhases([]agentapi.BootPhase{{Name: "kernel", DurationUS: 3_400_499}, {Name: "modules", DurationUS: 1500}})
	want := []controlapi.Phase{{Name: "guest:kernel", DurationMS: 3400}, {Name: "guest:modules", DurationMS: 2}}
	if !slices.Equal(got, want) {
		t.Errorf("guestPhases = %+v, want %+v", got, want)
	}
	if got := guestPhases(nil); len(got) != 0 {
		t.Errorf("no phases from an older agent: got %+v", got)
	}
}
