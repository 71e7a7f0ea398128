package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/api/agentapi"
)

// Paths of Docker in the guest.
const (
	dockerCLI = "/usr/bin/docker"
	// dockerWrapper is found before dockerCLI in PATH: it waits for
	// dockerd after boot and passes the proxy CA to builds.
	dockerWrapper = "/usr/local/bin/docker"
	dockerRoot    = "/var/lib/docker"
	dockerSocket  = "/run/docker.sock"
	dockerLog     = "/var/log/dockerd.log"
	// dockerWanted exists while the sandbox runs Docker; dockerReady while
	// dockerd answers on its socket.
	dockerWanted = "/run/sbx/docker.wanted"
	dockerReady  = "/run/sbx/docker.ready"
	cgroupRoot   = "/sys/fs/cgroup"
)

// dockerdBinaries are where templates have dockerd, in the order tried:
// Debian's docker.io, then Docker's own docker-ce packages.
var dockerdBinaries = []string{"/usr/sbin/dockerd", "/usr/bin/dockerd"}

// findDockerd returns the first of dockerdBinaries that is an executable
// regular file under the guest root root, as a guest path, or "".
func findDockerd(root string) string {
	for _, p := range dockerdBinaries {
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Supervision of dockerd.
const (
	dockerDiskTimeout  = 10 * time.Second
	dockerStopTimeout  = 10 * time.Second
	dockerMaxBackoff   = 30 * time.Second
	dockerStableRun    = time.Minute
	dockerLogMaxBytes  = 8 << 20
	dockerPingInterval = 100 * time.Millisecond
	// dockerConfigMaxBytes bounds the ~/.docker/config.json read.
	dockerConfigMaxBytes = 1 << 20
)

// dockerWrapperScript returns the script written to dockerWrapper (with
// cli, wanted and ready set to dockerCLI, dockerWanted and dockerReady;
// parameters for the tests). It stays small POSIX sh: wait (at most two
// minutes, TCG is slow) while the sandbox wants Docker and dockerd is not
// yet ready, add the proxy CA as a build argument to image builds, and run
// the real client.
//
// A build is "build" after the global options, directly or after image,
// builder or buildx (and buildx's options); the global options that take
// a separate value are skipped with it. The arguments are rotated through
// "$@" one by one (sh has no other array), the build argument added after
// the build word. Compose is not covered: Debian's docker.io has no
// compose plugin.
func dockerWrapperScript(cli, wanted, ready string) string {
	return `#!/bin/sh
# Written by sbx-agent at boot. Waits for the sandbox's Docker Engine after
# boot and passes $PROXY_CA_CERT_B64 to image builds; the client is ` + cli + `.
if [ -e ` + wanted + ` ] && [ ! -e ` + ready + ` ]; then
	i=0
	while [ ! -e ` + ready + ` ] && [ $i -lt 1200 ]; do
		[ $i -eq 20 ] && echo "docker: waiting for the sandbox's Docker Engine to start (log: ` + dockerLog + `)" >&2
		sleep 0.1; i=$((i+1))
	done
fi
if [ -n "$PROXY_CA_CERT_B64" ]; then
	n=$# s=top v=
	while [ $n -gt 0 ]; do
		a=$1; shift; n=$((n-1))
		set -- "$@" "$a"
		if [ -n "$v" ]; then v=; continue; fi
		case $s:$a in
		done:*) ;;
		top:--context|top:-c|top:--config|top:-H|top:--host|top:-l|top:--log-level|top:--tlscacert|top:--tlscert|top:--tlskey|buildx:--builder) v=1 ;;
		top:-*|buildx:-*) ;;
		top:build|image:build|builder:build|buildx:build) set -- "$@" --build-arg PROXY_CA_CERT_B64; s=done ;;
		top:image|top:builder|top:buildx) s=$a ;;
		*) s=done ;;
		esac
	done
fi
exec ` + cli + ` "$@"
`
}

// setupDocker prepares Docker for the agent user and root and, the first
// time, starts bringing dockerd up in the background: modules, cgroup2,
// the disk at /var/lib/docker, then dockerd under supervision. It does not
// wait for dockerd. A guest without dockerd is left alone.
func (g *Guest) setupDocker(ctx context.Context, user string, d *agentapi.DockerSetup) error {
	root := filepath.Dir(g.etc)
	bin := findDockerd(root)
	if bin == "" {
		g.log.Info("docker requested but the template has no dockerd", "paths", dockerdBinaries)
		g.dockerMods.release()
		return nil
	}
	if d.DiskSerial == "" {
		return errors.New("docker setup: no disk serial")
	}
	var errs []error
	env := g.Env()
	homes := []string{"root"}
	if user != "" {
		homes = append(homes, user)
	}
	for _, u := range homes {
		if err := g.writeDockerConfig(u, env); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, dockerCLI)); err == nil {
		p := filepath.Join(root, dockerWrapper)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
			if err := writeAtomicMode(p, []byte(dockerWrapperScript(dockerCLI, dockerWanted, dockerReady)), 0o755); err != nil {
				errs = append(errs, fmt.Errorf("write docker wrapper: %w", err))
			}
		}
	}
	g.mu.Lock()
	started := g.docker != nil
	if !started {
		g.docker = &dockerd{log: g.log.With("service", "dockerd"), bin: bin, reaper: g.reaper, env: env, stopc: make(chan struct{}), done: make(chan struct{})}
	}
	dk := g.docker
	g.mu.Unlock()
	if started {
		return errors.Join(errs...)
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(dockerWanted)), 0o755); err == nil {
		_ = os.WriteFile(filepath.Join(root, dockerWanted), nil, 0o644)
	}
	go func() {
		defer close(dk.done)
		start := time.Now()
		if err := g.prepareDocker(d.DiskSerial); err != nil {
			dk.log.Error("docker not started", "err", err)
			return
		}
		dk.log.Info("docker prepared", "duration", time.Since(start))
		dk.run(context.WithoutCancel(ctx), start)
	}()
	return errors.Join(errs...)
}

// prepareDocker loads the modules, mounts cgroup2 and the docker disk.
func (g *Guest) prepareDocker(serial string) error {
	var wg sync.WaitGroup
	wg.Go(func() { g.dockerMods.load(g.log) })
	err := func() error {
		if _, fstype, ok := mountedAt(cgroupRoot); !ok || fstype != "cgroup2" {
			if err := mkdirMount("cgroup2", cgroupRoot, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
				return err
			}
		}
		dev, err := findDiskBySerial(serial, dockerDiskTimeout)
		if err != nil {
			return err
		}
		if src, _, ok := mountedAt(dockerRoot); ok && src == dev {
			return nil
		}
		// A guest restored from a snapshot read this disk's first blocks
		// (the partition scan) when it was the snapshot VM's blank
		// stand-in: drop them, or ext4 would see stale zeros.
		if err := flushBlockCache(dev); err != nil {
			return err
		}
		if err := mkdirMount(dev, dockerRoot, "ext4", unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return err
		}
		if err := growExt4(g.log, dev, dockerRoot); err != nil {
			g.log.Warn("docker disk not grown", "err", err)
		}
		return nil
	}()
	wg.Wait()
	return err
}

// findDiskBySerial waits for the block device whose virtio serial is
// serial and returns its /dev path.
func findDiskBySerial(serial string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		matches, _ := filepath.Glob("/sys/block/*/serial")
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err == nil && strings.TrimSpace(string(b)) == serial {
				dev := "/dev/" + filepath.Base(filepath.Dir(m))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("disk with serial %q did not appear within %s", serial, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeDockerConfig sets proxies.default in the user's
// ~/.docker/config.json from the proxy environment, keeping every other
// setting; docker then passes the proxy to builds and containers.
func (g *Guest) writeDockerConfig(user string, env []string) error {
	acct, err := lookupAccount(g.etc, user)
	if err != nil {
		return fmt.Errorf("docker config for %s: %w", user, err)
	}
	proxies := map[string]string{}
	for key, field := range map[string]string{"HTTP_PROXY": "httpProxy", "HTTPS_PROXY": "httpsProxy", "NO_PROXY": "noProxy"} {
		if v := envValue(env, key); v != "" {
			proxies[field] = v
		}
	}
	if len(proxies) == 0 {
		return nil
	}
	if acct.Home == "/" || !filepath.IsAbs(acct.Home) {
		return nil // no home to write into
	}
	// The home and everything in it may be the user's: no symlink is
	// followed below the guest root, no file written or chowned but by
	// descriptor (see nofollow_linux.go).
	home, err := openDirNoFollow(filepath.Dir(g.etc), acct.Home)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return nil // no home to write into
	}
	if err != nil {
		return fmt.Errorf("docker config for %s: %w", user, err)
	}
	defer home.Close()
	created := false
	if err := unix.Mkdirat(int(home.Fd()), ".docker", 0o700); err == nil {
		created = true
	} else if !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("docker config for %s: mkdir %s/.docker: %w", user, home.Name(), err)
	}
	dir, err := openDirAt(home, ".docker")
	if err != nil {
		return fmt.Errorf("docker config for %s: %w", user, err)
	}
	defer dir.Close()
	if created {
		if err := dir.Chown(acct.UID, acct.GID); err != nil {
			return fmt.Errorf("docker config for %s: %w", user, err)
		}
	}
	p := filepath.Join(dir.Name(), "config.json")
	cfg := map[string]any{}
	if b, err := readFileAt(dir, "config.json", dockerConfigMaxBytes); err == nil {
		if err := json.Unmarshal(b, &cfg); err != nil {
			return fmt.Errorf("docker config %s is not JSON, left alone: %w", p, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("docker config for %s: %w", user, err)
	}
	all, _ := cfg["proxies"].(map[string]any)
	if all == nil {
		all = map[string]any{}
	}
	all["default"] = proxies
	cfg["proxies"] = all
	b, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return err
	}
	if err := writeFileAt(dir, "config.json", append(b, '\n'), 0o600, acct.UID, acct.GID); err != nil {
		return fmt.Errorf("docker config for %s: %w", user, err)
	}
	return nil
}

// writeAtomicMode writes data to path through a temp file and a rename.
func writeAtomicMode(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".sbx-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// dockerd runs and restarts dockerd.
type dockerd struct {
	log    *slog.Logger
	bin    string // dockerd's path
	reaper *Reaper
	env    []string

	stopOnce sync.Once
	stopc    chan struct{} // closed by stop
	done     chan struct{} // closed when the supervising goroutine ended

	mu  sync.Mutex
	pid int // guarded by mu; 0 when not running
}

// run starts dockerd and restarts it with backoff when it dies, until
// stop. since is when the docker setup began, for the readiness log.
func (d *dockerd) run(ctx context.Context, since time.Time) {
	backoff := time.Second
	for {
		select {
		case <-d.stopc:
			return
		default:
		}
		started := time.Now()
		pid, exited, err := d.start()
		if err != nil {
			d.log.Error("start dockerd", "err", err)
		} else {
			d.mu.Lock()
			d.pid = pid
			d.mu.Unlock()
			d.log.Info("dockerd started", "pid", pid, "path", d.bin, "log", dockerLog)
			readyCtx, cancel := context.WithCancel(ctx)
			go d.watchReady(readyCtx, since)
			ws := <-exited
			cancel()
			os.Remove(dockerReady)
			d.mu.Lock()
			d.pid = 0
			d.mu.Unlock()
			select {
			case <-d.stopc:
				d.log.Info("dockerd stopped", "status", exitStatus(ws))
				return
			default:
			}
			d.log.Warn("dockerd exited; restarting", "status", exitStatus(ws), "backoff", backoff, "log", dockerLog)
		}
		if time.Since(started) > dockerStableRun {
			backoff = time.Second
		}
		select {
		case <-d.stopc:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, dockerMaxBackoff)
	}
}

func (d *dockerd) start() (int, <-chan unix.WaitStatus, error) {
	if fi, err := os.Stat(dockerLog); err == nil && fi.Size() > dockerLogMaxBytes {
		_ = os.Rename(dockerLog, dockerLog+".1")
	}
	logf, err := os.OpenFile(dockerLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return 0, nil, fmt.Errorf("open %s: %w", dockerLog, err)
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, nil, err
	}
	defer devnull.Close()
	env := append([]string{"PATH=" + defaultPath, "HOME=/root"}, d.env...)
	attr := &os.ProcAttr{Dir: "/", Env: env, Files: []*os.File{devnull, logf, logf}, Sys: &unix.SysProcAttr{Setsid: true}}
	return d.reaper.Start(func() (int, error) {
		p, err := os.StartProcess(d.bin, []string{d.bin}, attr)
		if err != nil {
			return 0, err
		}
		pid := p.Pid
		_ = p.Release()
		return pid, nil
	})
}

// watchReady marks dockerd ready once it answers /_ping on its socket.
func (d *dockerd) watchReady(ctx context.Context, since time.Time) {
	t := time.NewTicker(dockerPingInterval)
	defer t.Stop()
	for {
		if dockerPing(ctx) {
			_ = os.WriteFile(dockerReady, nil, 0o644)
			d.log.Info("dockerd ready", "since_setup", time.Since(since))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dockerPing reports whether dockerd answers GET /_ping with 200.
func dockerPing(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "unix", dockerSocket)
	if err != nil {
		return false
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte("GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return false
	}
	f := strings.Fields(line)
	return len(f) >= 2 && f[1] == "200"
}

// stop ends dockerd (SIGTERM, then SIGKILL after timeout) and its
// supervision, and waits for both. Idempotent.
func (d *dockerd) stop(timeout time.Duration) {
	d.stopOnce.Do(func() { close(d.stopc) })
	d.mu.Lock()
	pid := d.pid
	d.mu.Unlock()
	if pid > 0 {
		_ = unix.Kill(pid, unix.SIGTERM)
	}
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.log.Warn("dockerd did not stop in time; killing it", "timeout", timeout)
		d.mu.Lock()
		pid := d.pid
		d.mu.Unlock()
		if pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		select {
		case <-d.done:
		case <-time.After(time.Second):
		}
	}
}

// stopDocker stops dockerd, if it runs, before power-off.
func (g *Guest) stopDocker() {
	g.mu.Lock()
	dk := g.docker
	g.mu.Unlock()
	if dk != nil {
		dk.stop(dockerStopTimeout)
	}
}

// flushBlockCache drops the kernel's cached blocks of device dev
// (BLKFLSBUF).
func flushBlockCache(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKFLSBUF, 0); e != 0 {
			ierr = e
		}
	}); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("flush the cached blocks of %s: %w", dev, ierr)
	}
	return nil
}
