package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/api/agentapi"
)

const (
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// outputGrace is how long output may keep flowing after the process
	// exited (background children holding the pipe or terminal open).
	outputGrace = 2 * time.Second
	// killGrace is how long a process has between SIGHUP and SIGKILL when
	// its stream broke.
	killGrace = 2 * time.Second
)

// startError is a failure to start a process, with its protocol code.
type startError struct {
	code  agentapi.ErrorCode
	msg   string
	field string // the request field at fault, "" for argv
}

func (e *startError) Error() string { return e.msg }

// process is a started exec.
type process struct {
	pid    int
	exited <-chan unix.WaitStatus
	tty    *os.File // pty master, or nil
	stdin  *os.File // pipe write end (nil with a tty)
	stdout *os.File // pipe read end (nil with a tty)
	stderr *os.File // pipe read end (nil with a tty)
}

// signal sends sig to the process's foreground process group (tty) or
// process group.
func (p *process) signal(sig unix.Signal) error {
	pgrp := p.pid
	if p.tty != nil {
		if rc, err := p.tty.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) {
				if g, err := unix.IoctlGetInt(int(fd), unix.TIOCGPGRP); err == nil && g > 0 {
					pgrp = g
				}
			})
		}
	}
	return unix.Kill(-pgrp, sig)
}

func (p *process) resize(s agentapi.Size) error {
	if p.tty == nil {
		return nil
	}
	return setWinsize(p.tty, s.Rows, s.Cols)
}

func setWinsize(f *os.File, rows, cols uint16) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return err
	}
	return ierr
}

// buildEnv returns the login environment of a, then base (the guest-wide
// environment from setup), then the request's own (later entries win, as
// in a shell).
func buildEnv(a account, base []string, req *agentapi.ExecRequest) []string {
	env := []string{
		"HOME=" + a.Home,
		"USER=" + a.Name,
		"LOGNAME=" + a.Name,
		"SHELL=" + a.Shell,
		"PATH=" + defaultPath,
	}
	if req.TTY {
		term := req.Term
		if term == "" {
			term = "xterm"
		}
		env = append(env, "TERM="+term)
	}
	env = append(env, base...)
	env = append(env, req.Env...)
	// Keep the last value of each key, in first-seen order.
	idx := map[string]int{}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// lookPath finds file in the PATH of env, like exec.LookPath, with docker's
// messages.
func lookPath(file string, env []string) (string, error) {
	check := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return os.ErrPermission
		}
		return nil
	}
	if strings.Contains(file, "/") {
		err := check(file)
		switch {
		case err == nil:
			return file, nil
		case errors.Is(err, os.ErrPermission):
			return "", &startError{code: agentapi.CodePermission, msg: fmt.Sprintf("exec: %q: permission denied", file)}
		default:
			return "", &startError{code: agentapi.CodeNotFound, msg: fmt.Sprintf("exec: %q: stat %s: no such file or directory", file, file)}
		}
	}
	denied := false
	for dir := range strings.SplitSeq(envValue(env, "PATH"), ":") {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		err := check(p)
		if err == nil {
			return p, nil
		}
		if errors.Is(err, os.ErrPermission) {
			denied = true
		}
	}
	if denied {
		return "", &startError{code: agentapi.CodePermission, msg: fmt.Sprintf("exec: %q: permission denied", file)}
	}
	return "", &startError{code: agentapi.CodeNotFound, msg: fmt.Sprintf("exec: %q: executable file not found in $PATH", file)}
}

// start starts the process described by req.
func (s *Server) start(req *agentapi.ExecRequest) (*process, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return nil, &startError{code: agentapi.CodeInvalid, msg: "exec: no command given"}
	}
	userSpec := req.User
	if userSpec == "" {
		userSpec = s.cfg.DefaultUser
	}
	acct, err := lookupAccount(s.cfg.EtcDir, userSpec)
	if err != nil {
		return nil, &startError{agentapi.CodeNotFound, err.Error(), "user"}
	}
	var base []string
	if s.cfg.BaseEnv != nil {
		base = s.cfg.BaseEnv()
	}
	env := buildEnv(acct, base, req)
	dir := req.Dir
	if dir == "" {
		dir = acct.Home
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			dir = "/"
		}
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, &startError{codeOf(err), fmt.Sprintf("chdir to cwd (%q) set in exec request: %v", dir, errors.Unwrap(err)), "dir"}
	} else if !fi.IsDir() {
		return nil, &startError{agentapi.CodeInvalid, fmt.Sprintf("chdir to cwd (%q) set in exec request: not a directory", dir), "dir"}
	}
	path, err := lookPath(req.Argv[0], env)
	if err != nil {
		return nil, err
	}

	sys := &syscall.SysProcAttr{}
	if acct.UID != os.Getuid() || acct.GID != os.Getgid() {
		sys.Credential = &syscall.Credential{Uid: uint32(acct.UID), Gid: uint32(acct.GID), Groups: acct.Groups}
	}
	p := &process{}
	var childFiles []*os.File
	if req.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return nil, &startError{code: agentapi.CodeInternal, msg: fmt.Sprintf("exec: open pty: %v", err)}
		}
		rows, cols := req.Rows, req.Cols
		if rows == 0 || cols == 0 {
			rows, cols = 24, 80
		}
		if err := setWinsize(master, rows, cols); err != nil {
			master.Close()
			slave.Close()
			return nil, &startError{code: agentapi.CodeInternal, msg: fmt.Sprintf("exec: set terminal size: %v", err)}
		}
		p.tty = master
		childFiles = []*os.File{slave, slave, slave}
		sys.Setsid, sys.Setctty, sys.Ctty = true, true, 0
	} else {
		inR, inW, err1 := os.Pipe()
		outR, outW, err2 := os.Pipe()
		errR, errW, err3 := os.Pipe()
		if err := errors.Join(err1, err2, err3); err != nil {
			for _, f := range []*os.File{inR, inW, outR, outW, errR, errW} {
				if f != nil {
					f.Close()
				}
			}
			return nil, &startError{code: agentapi.CodeInternal, msg: fmt.Sprintf("exec: create pipes: %v", err)}
		}
		p.stdin, p.stdout, p.stderr = inW, outR, errR
		childFiles = []*os.File{inR, outW, errW}
		sys.Setpgid = true
	}
	attr := &os.ProcAttr{Dir: dir, Env: env, Files: childFiles, Sys: sys}
	pid, exited, err := s.cfg.Reaper.Start(func() (int, error) {
		proc, err := os.StartProcess(path, req.Argv, attr)
		if err != nil {
			return 0, err
		}
		pid := proc.Pid
		_ = proc.Release()
		return pid, nil
	})
	closed := map[*os.File]bool{}
	for _, f := range childFiles {
		if !closed[f] {
			f.Close()
			closed[f] = true
		}
	}
	if err != nil {
		p.closeAll()
		// The child changes to dir after taking on the user's ids, so a
		// folder the user cannot enter fails the same way (EACCES) as a
		// command it cannot run; tell them apart.
		if errors.Is(err, unix.EACCES) && !canEnter(dir, acct) {
			return nil, &startError{agentapi.CodePermission, fmt.Sprintf("cannot enter working folder %s as user %s: permission denied", dir, acct.Name), "dir"}
		}
		code := agentapi.CodePermission
		if errors.Is(err, os.ErrNotExist) {
			code = agentapi.CodeNotFound
		}
		return nil, &startError{code: code, msg: fmt.Sprintf("exec: %q: %v", req.Argv[0], errors.Unwrap(err))}
	}
	p.pid, p.exited = pid, exited
	return p, nil
}

func (p *process) closeAll() {
	for _, f := range []*os.File{p.tty, p.stdin, p.stdout, p.stderr} {
		if f != nil {
			f.Close()
		}
	}
}

// openPTY opens a pseudo-terminal whose master is non-blocking, so that
// closing it interrupts a pending Read (creack/pty leaves it blocking).
func openPTY() (master, slave *os.File, err error) {
	m, sl, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	fd, err := unix.Dup(int(m.Fd()))
	m.Close()
	if err != nil {
		sl.Close()
		return nil, nil, fmt.Errorf("dup pty master: %w", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		sl.Close()
		return nil, nil, fmt.Errorf("set pty master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), sl, nil
}

func exitStatus(ws unix.WaitStatus) agentapi.ExitStatus {
	if ws.Signaled() {
		return agentapi.ExitStatus{Code: 128 + int(ws.Signal()), Signal: unix.SignalName(ws.Signal())}
	}
	return agentapi.ExitStatus{Code: ws.ExitStatus()}
}

// exec runs one exec request on stream; see agentapi.ExecRequest for the
// frame sequence.
func (s *Server) exec(ctx context.Context, stream net.Conn, req *agentapi.ExecRequest) {
	// Start (the chdir into a workspace included) waits for a setup in
	// progress and is refused once power-off has begun; the process then
	// runs on without holding the lock.
	var p *process
	err := s.whileUp(func() error {
		var err error
		p, err = s.start(req)
		return err
	})
	if err != nil {
		var se *startError
		if errors.As(err, &se) {
			s.respond(stream, agentapi.Response{Code: se.code, Error: se.msg, Field: se.field})
		} else {
			s.respondErr(stream, agentapi.CodeInternal, err)
		}
		return
	}
	defer p.closeAll()
	log := s.log.With("pid", p.pid, "argv0", req.Argv[0])
	log.Debug("exec started", "tty", req.TTY)
	fw := agentapi.NewFrameWriter(stream)
	if err := fw.WriteJSON(agentapi.FrameResponse, agentapi.Response{OK: true, Exec: &agentapi.ExecResponse{PID: p.pid}}); err != nil {
		log.Warn("write exec response", "err", err)
	}

	// Output: one copier per output stream.
	var outWG sync.WaitGroup
	copyOut := func(f *os.File, t agentapi.FrameType) {
		buf := make([]byte, 32<<10)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				if fw.WriteFrame(t, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				return // io.EOF, EIO (pty hang-up), or closed
			}
		}
	}
	if p.tty != nil {
		outWG.Go(func() { copyOut(p.tty, agentapi.FrameStdout) })
	} else {
		outWG.Go(func() { copyOut(p.stdout, agentapi.FrameStdout) })
		outWG.Go(func() { copyOut(p.stderr, agentapi.FrameStderr) })
	}

	// Input: a writer goroutine so a full stdin never blocks signals.
	stdinCh := make(chan []byte, 16)
	quit := make(chan struct{})
	var inWG sync.WaitGroup
	inWG.Go(func() {
		var w io.Writer = p.stdin
		if p.tty != nil {
			w = p.tty
		}
		broken := false
		for b := range stdinCh {
			if b == nil { // stdin closed
				if p.tty != nil {
					_, _ = p.tty.Write([]byte{4}) // VEOF: end of input for a line-mode reader
				} else {
					p.stdin.Close()
				}
				continue
			}
			if !broken {
				if _, err := w.Write(b); err != nil {
					broken = true
				}
			}
		}
	})
	readerErr := make(chan error, 1)
	var rdWG sync.WaitGroup
	rdWG.Go(func() {
		defer close(stdinCh)
		stdinClosed := false
		for {
			t, pl, err := agentapi.ReadFrame(stream)
			if err != nil {
				readerErr <- err
				return
			}
			switch t {
			case agentapi.FrameStdin:
				if stdinClosed {
					continue
				}
				select {
				case stdinCh <- pl:
				case <-quit:
					return
				}
			case agentapi.FrameStdinClose:
				if !stdinClosed {
					stdinClosed = true
					select {
					case stdinCh <- nil:
					case <-quit:
						return
					}
				}
			case agentapi.FrameResize:
				if sz, err := agentapi.DecodeSize(pl); err != nil {
					log.Warn("bad resize frame", "err", err)
				} else if err := p.resize(sz); err != nil {
					log.Warn("resize", "err", err)
				}
			case agentapi.FrameSignal:
				if n, err := agentapi.DecodeSignal(pl); err != nil {
					log.Warn("bad signal frame", "err", err)
				} else if err := p.signal(unix.Signal(n)); err != nil && !errors.Is(err, unix.ESRCH) {
					log.Warn("signal", "signal", n, "err", err)
				}
			default:
				log.Warn("unexpected frame during exec", "frame", t)
			}
		}
	})

	var ws unix.WaitStatus
	select {
	case ws = <-p.exited:
	case err := <-readerErr:
		// The host is gone: hang up, then kill.
		log.Warn("exec stream broke; killing process", "err", err)
		_ = unix.Kill(-p.pid, unix.SIGHUP)
		select {
		case ws = <-p.exited:
		case <-time.After(killGrace):
			_ = unix.Kill(-p.pid, unix.SIGKILL)
			ws = <-p.exited
		}
	case <-ctx.Done():
		_ = unix.Kill(-p.pid, unix.SIGKILL)
		ws = <-p.exited
	}

	// Flush output: wait for the copiers to see EOF, within a grace period.
	outDone := make(chan struct{})
	go func() { outWG.Wait(); close(outDone) }()
	select {
	case <-outDone:
	case <-time.After(outputGrace):
		log.Debug("output still open after exit; closing it")
		for _, f := range []*os.File{p.tty, p.stdout, p.stderr} {
			if f != nil {
				f.Close()
			}
		}
		<-outDone
	}
	st := exitStatus(ws)
	log.Debug("exec exited", "code", st.Code, "signal", st.Signal)
	if err := fw.WriteJSON(agentapi.FrameExit, st); err != nil {
		log.Debug("write exit frame", "err", err)
	}
	close(quit)
	stream.Close()
	p.closeAll() // unblocks a stdin write stuck on a full pipe
	rdWG.Wait()
	inWG.Wait()
}

// canEnter reports whether acct may search every directory on the way to
// dir, judged by mode bits (access(2) would answer for the agent, which
// runs as root). ACLs are not consulted, so use it only to explain a
// failure, never to refuse. Paths it cannot inspect count as enterable.
func canEnter(dir string, acct account) bool {
	if acct.UID == 0 {
		return true
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return true
	}
	p := "/"
	for _, c := range append([]string{""}, strings.Split(strings.TrimPrefix(real, "/"), "/")...) {
		p = filepath.Join(p, c)
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return true
		}
		var bit uint32 = 0o001
		switch {
		case st.Uid == uint32(acct.UID):
			bit = 0o100
		case slices.Contains(acct.Groups, st.Gid) || st.Gid == uint32(acct.GID):
			bit = 0o010
		}
		if st.Mode&bit == 0 {
			return false
		}
	}
	return true
}
