package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/internal/jail"
	"github.com/sbx-dev/sbx/internal/vm"
)

// A virtio-fs share is served by a virtiofsd beside QEMU, one per share,
// jailed like QEMU but in a user namespace of its own (jail.Spec.UserNS):
// it must mount and pivot into the folder it serves (its own sandbox,
// -o sandbox=namespace, which also keeps it from following a symlink
// out of the folder), so it holds the capabilities that needs, and they
// reach nothing but files of the one id its namespace maps: the jail's
// uid, the workspace owner's. Its set-id calls are no-ops, so everything
// it creates is that uid's whoever asks in the guest; a chown to any
// other id fails (unmapped), set-id modes and devices are refused by the
// filter and the namespace. It runs without CAP_FSETID (-o modcaps=-fsetid),
// so the host kernel clears the set-id bits of a file the guest writes,
// truncates or chowns (one the user made set-uid on the host included):
// with the capability, even guest root's writes kept them. A read-only
// share is bound read-only.

// fileServerCaps are what virtiofsd keeps in its namespace: it drops to
// this set itself (chown, dac_override, fowner, setgid, setuid, mknod,
// setfcap; fsetid taken out by its modcaps option) after building its
// sandbox (sys_admin), and changes its bounding set (setpcap). CAP_FSETID
// is never given: it would keep set-id bits through writes.
var fileServerCaps = []uintptr{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH, unix.CAP_FOWNER,
	unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETPCAP, unix.CAP_SYS_ADMIN, unix.CAP_MKNOD, unix.CAP_SETFCAP,
}

// fileServer is one running virtiofsd.
type fileServer struct {
	tag  string // the share's tag
	cmd  *exec.Cmd
	root string
	done chan struct{}
}

func (f *fileServer) kill() {
	if f.cmd.Process != nil {
		_ = f.cmd.Process.Kill()
	}
	<-f.done
}

// serverStyles caches, per virtiofsd binary, whether it takes the Rust
// server's long options (--shared-dir) or the C server's -o options.
var serverStyles sync.Map // path -> bool (true: Rust style)

func rustStyle(bin string) bool {
	if v, ok := serverStyles.Load(bin); ok {
		return v.(bool)
	}
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	rust := strings.Contains(string(out), "--shared-dir")
	serverStyles.Store(bin, rust)
	return rust
}

// fileServerArgs is the server's argv for share s.
func fileServerArgs(bin string, rust bool, s vm.Share) []string {
	if rust {
		return []string{bin, "--socket-path=" + s.Socket, "--shared-dir=" + s.Path, "--cache=auto", "--sandbox=namespace", "--modcaps=-fsetid"}
	}
	return []string{bin, "--socket-path=" + s.Socket, "-o", "source=" + s.Path, "-o", "cache=auto",
		"-o", "sandbox=namespace", "-o", "no_xattr", "-o", "no_posix_lock", "-o", "no_flock", "-o", "modcaps=-fsetid"}
}

// startFileServers starts a server for each virtio-fs share of cfg and
// returns once each listens; on failure none is left running.
func startFileServers(ctx context.Context, cfg vm.Config, stderr io.Writer) ([]*fileServer, error) {
	var servers []*fileServer
	for _, s := range cfg.Shares {
		if s.Of() != vm.TransportVirtioFS {
			continue
		}
		fs, err := startFileServer(ctx, cfg, s, stderr)
		if err != nil {
			for _, f := range servers {
				f.kill()
			}
			return nil, fmt.Errorf("%w: share %s: %w", vm.ErrFileServer, s.Tag, err)
		}
		servers = append(servers, fs)
	}
	return servers, nil
}

func startFileServer(ctx context.Context, cfg vm.Config, s vm.Share, stderr io.Writer) (*fileServer, error) {
	bin, err := exec.LookPath(cfg.FileServer)
	if err != nil {
		return nil, err
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, err
	}
	uid, gid := os.Getuid(), os.Getgid()
	if cfg.Jail != nil && cfg.Jail.NewRoot {
		uid, gid = cfg.Jail.UID, cfg.Jail.GID
	}
	if uid <= 0 || gid <= 0 {
		return nil, fmt.Errorf("refusing to run the file server as uid %d gid %d", uid, gid)
	}
	sockDir := filepath.Dir(s.Socket)
	os.Remove(s.Socket)
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(sockDir, uid, gid); err != nil {
			return nil, err
		}
	}
	root, err := os.MkdirTemp("", "sbx-fsjail-")
	if err != nil {
		return nil, err
	}
	spec := jail.Spec{
		Argv: fileServerArgs(bin, rustStyle(bin), s), Env: []string{"PATH=/usr/bin:/bin"},
		Root: root, UID: uid, GID: gid, UserNS: true, Caps: fileServerCaps, FakeSetID: true,
		ReadWrite: []string{sockDir},
		// The C server writes its pid file there.
		Tmpfs: []string{"/var/run/virtiofsd", "/run/virtiofsd"},
	}
	spec.Guarded = []string{s.Path}
	if s.ReadOnly {
		spec.ReadOnly = append(spec.ReadOnly, s.Path)
	} else {
		spec.ReadWrite = append(spec.ReadWrite, s.Path)
	}
	if !underSystemDirs(bin) {
		spec.Exec = append(spec.Exec, bin)
	}
	cmd, err := jail.Command(spec)
	if err != nil {
		os.Remove(root)
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		os.Remove(root)
		return nil, err
	}
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	fs := &fileServer{tag: s.Tag, cmd: cmd, root: root, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		os.Remove(root)
		close(fs.done)
	}()
	// It listens once its sandbox is built.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Lstat(s.Socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return fs, nil
		}
		select {
		case <-fs.done:
			return nil, fmt.Errorf("it exited at start (%s); its output is in the sandbox's log", cmd.ProcessState)
		case <-ctx.Done():
			fs.kill()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			fs.kill()
			return nil, errors.New("it did not listen within 10s")
		}
	}
}
