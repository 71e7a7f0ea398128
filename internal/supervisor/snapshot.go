package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sbx-dev/sbx/internal/snapshot"
	"github.com/sbx-dev/sbx/internal/vm/qemu"
)

// Snapshot saving runs in a supervisor process of its own, like every
// other VM: `sbx supervise-snapshot` boots the snapshot VM, saves it and
// exits. It is in its own session, so a terminal's Ctrl-C reaches only
// its caller, which asks it to stop (SIGTERM: QEMU is killed and the
// half-made folder removed); a caller killed outright leaves it to finish
// the save, which the next create then uses. Its log is appended to
// <cache>/snapshots/build.log.

// SnapshotJob is what `sbx supervise-snapshot` reads on its stdin.
type SnapshotJob struct {
	Cache   string        `json:"cache"`
	QEMUImg string        `json:"qemu_img"`
	Spec    snapshot.Spec `json:"spec"`
}

// SnapshotLog is the snapshot supervisors' log in the snapshots folder.
const SnapshotLog = "build.log"

// snapshotLogMax is the size past which the log starts over (the old
// one kept as build.log.1).
const snapshotLogMax = 4 << 20

// The lines a snapshot supervisor writes on fd 3 for its caller.
const (
	snapProgress = "progress "
	snapFailed   = "error "
	snapDone     = "done"
)

// SaveSnapshot returns job's snapshot, saving it first in a snapshot
// supervisor when there is none. progress gets its lines for people.
func SaveSnapshot(ctx context.Context, job SnapshotJob, progress io.Writer) (*snapshot.Snapshot, error) {
	if s, err := snapshot.Existing(job.Cache, job.Spec); err == nil {
		return s, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the sbx binary: %w", err)
	}
	dir := snapshot.Dir(job.Cache)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshot cache: %w", err)
	}
	logf, err := openSnapshotLog(filepath.Join(dir, SnapshotLog))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	in, err := json.Marshal(job)
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	cmd := exec.Command(exe, "supervise-snapshot")
	cmd.Stdin = strings.NewReader(string(in))
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, fmt.Errorf("start the snapshot supervisor: %w", err)
	}
	pw.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var failed string
	done := false
	for lines != nil {
		select {
		case l, ok := <-lines:
			switch {
			case !ok:
				lines = nil
			case strings.HasPrefix(l, snapProgress):
				if progress != nil {
					fmt.Fprintln(progress, strings.TrimPrefix(l, snapProgress))
				}
			case strings.HasPrefix(l, snapFailed):
				failed = strings.TrimPrefix(l, snapFailed)
			case l == snapDone:
				done = true
			}
		case <-ctx.Done():
			// Asked to stop: QEMU goes and the half-made folder with it.
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
			return nil, ctx.Err()
		}
	}
	werr := <-exited
	switch {
	case done && werr == nil:
		return snapshot.Existing(job.Cache, job.Spec)
	case failed != "":
		return nil, errors.New(failed)
	case werr != nil:
		return nil, fmt.Errorf("the snapshot supervisor ended (%v); see %s", werr, logf.Name())
	default:
		return nil, fmt.Errorf("the snapshot supervisor ended without a result; see %s", logf.Name())
	}
}

// openSnapshotLog opens the log for appending, starting it over past
// snapshotLogMax.
func openSnapshotLog(path string) (*os.File, error) {
	if st, err := os.Stat(path); err == nil && st.Size() > snapshotLogMax {
		_ = os.Rename(path, path+".1")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the snapshot log: %w", err)
	}
	return f, nil
}

// RunSnapshot is the body of `sbx supervise-snapshot`: it reads a
// SnapshotJob from stdin, saves its snapshot and reports on fd 3. ctx
// ends on SIGTERM.
func RunSnapshot(ctx context.Context, stdin io.Reader, log *slog.Logger) error {
	report := os.NewFile(3, "report")
	if report == nil {
		return errors.New("supervise-snapshot: no report pipe (fd 3); it is run by sbx itself")
	}
	defer report.Close()
	var job SnapshotJob
	if err := json.NewDecoder(io.LimitReader(stdin, 1<<20)).Decode(&job); err != nil {
		return fmt.Errorf("supervise-snapshot: read the job: %w", err)
	}
	log = log.With("component", "snapshot-supervisor", "key", job.Spec.Key(), "template", job.Spec.TemplateName)
	log.Info("snapshot supervisor started", "pid", os.Getpid())
	// A caller gone (broken pipe) changes nothing: the save goes on.
	progress := lineWriter(func(l string) { _, _ = fmt.Fprintln(report, snapProgress+l) })
	_, err := snapshot.Ensure(ctx, job.Cache, job.Spec, snapshot.Options{
		QEMUImg: job.QEMUImg, Backend: qemu.New(job.Spec.QEMU), Progress: progress, Log: log,
	})
	if err != nil {
		log.Error("snapshot not saved", "err", err)
		_, _ = fmt.Fprintln(report, snapFailed+strings.ReplaceAll(err.Error(), "\n", " "))
		return err
	}
	_, _ = fmt.Fprintln(report, snapDone)
	return nil
}

// lineWriter calls f with each line written to it.
type lineWriter func(string)

func (f lineWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		f(l)
	}
	return len(p), nil
}
