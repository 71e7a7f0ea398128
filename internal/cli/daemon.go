package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/net/netutil"

	"github.com/sbx-dev/sbx/internal/daemon"
	"github.com/sbx-dev/sbx/internal/e2b"
	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newDaemonCmd(e *env) *cobra.Command {
	var socket, listen, tokenFile string
	cmd := &cobra.Command{
		Use:   "daemon [--socket PATH] [--listen ADDR --token-file FILE]",
		Short: "Serve the sandbox lifecycle as a REST API (docs/api.md)",
		Long: `Serve the sandboxes (create, list, inspect, start, stop, remove), exec
(streamed, or interactive with a TTY over a WebSocket), file upload and
download, ports, the network policy (default, rules, log) and an events
stream as REST + JSON over HTTP (docs/api.md, api/openapi.json) until
interrupted. With --listen it also serves E2B's API (docs/e2b.md). By default on the unix socket daemon.sock in sbx's runtime
folder, mode 0600: whoever can connect runs anything in every sandbox. With
--listen also on TCP, where every request needs the bearer token in
--token-file (a file only you can read, at least 16 characters); --listen
without a token is refused. The CLI keeps working beside it. Sandboxes it
starts keep running after it exits; stop them with sbx stop.`,
		Example: `  sbx daemon &
  curl --unix-socket "$XDG_RUNTIME_DIR/sbx/daemon.sock" http://sbx/v1/sandboxes
  sbx daemon --listen 127.0.0.1:7070 --token-file ~/.config/sbx/api-token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var token string
			switch {
			case listen != "" && tokenFile == "":
				return userErr(nil, "give --token-file FILE (a secret of 16 characters or more, mode 0600)", "--listen needs a bearer token: the API runs anything in every sandbox")
			case tokenFile != "":
				t, err := daemon.ReadToken(tokenFile)
				if err != nil {
					return userErr(nil, "write a token of 16 characters or more to a file only you can read (chmod 600)", "--token-file: %v", err)
				}
				token = t
			}
			if listen != "" {
				if err := checkListenAddr(listen); err != nil {
					return err
				}
			}
			defaultSocket := filepath.Join(e.dirs.Runtime, "daemon.sock")
			customSocket := socket != ""
			if !customSocket {
				socket = defaultSocket
			}
			// No prompts: requests decide nothing on a terminal.
			e.stdin = strings.NewReader("")
			srv := &daemon.Server{M: e.manager(), Log: e.log,
				Start: func(ctx context.Context, sb *sandbox.Sandbox) error {
					return e.ensureRunning(ctx, sb, startInBackground)
				}}
			h := srv.Handler()
			ul, err := daemon.ListenUnix(socket)
			if err != nil {
				return unixListenErr(err, socket, defaultSocket, customSocket)
			}
			servers := []*http.Server{newHTTPServer(h)}
			listeners := []net.Listener{netutil.LimitListener(ul, maxConns)}
			if listen != "" {
				tl, err := net.Listen("tcp", listen)
				if err != nil {
					ul.Close()
					return tcpListenErr(err, listen)
				}
				// /v1 with the bearer token; the rest is E2B's API
				// (docs/e2b.md), with its own keys.
				uid, gid := lifecycle.GuestIDs()
				eb := &e2b.Server{M: e.manager(), APIKey: token, WorkRoot: lifecycle.E2BWorkRoot(e.dirs), UID: uid, GID: gid, HomeAlias: true, Log: e.log,
					Start: srv.Start}
				top := http.NewServeMux()
				top.Handle("/v1/", daemon.RequireToken(h, token))
				top.Handle("/", eb.Handler())
				servers = append(servers, newHTTPServer(top))
				listeners = append(listeners, netutil.LimitListener(tl, maxConns))
			}
			errc := make(chan error, len(servers))
			for i, s := range servers {
				fmt.Fprintf(e.stderr, "sbx: daemon listening on %s\n", listeners[i].Addr())
				go func() { errc <- s.Serve(listeners[i]) }()
			}
			select {
			case <-ctx.Done():
			case err = <-errc:
			}
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for _, s := range servers {
				s.Shutdown(sctx)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				return userErr(err, "", "the daemon stopped")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "unix socket to serve on (default: daemon.sock in sbx's runtime folder)")
	cmd.Flags().StringVar(&listen, "listen", "", "also serve on this TCP address (needs --token-file)")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token TCP requests must carry")
	return cmd
}

// maxConns caps each listener's open connections: past it new ones wait,
// so idle connections (anyone on the machine can open them on TCP) do not
// use up the daemon's descriptors. A refused request closes its
// connection and one that sends nothing is closed after
// ReadHeaderTimeout, so without the token nobody holds slots for long.
const maxConns = 1024

// newHTTPServer serves h with timeouts: a connection that sends nothing
// is closed, so nobody holds the daemon's connections open for nothing.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second}
}

// listenForm is the --listen syntax, for hints.
const listenForm = "give --listen as HOST:PORT with a port from 1 to 65535 (0 picks a free one), for example 127.0.0.1:7070"

// checkListenAddr refuses a --listen value that is not HOST:PORT with a
// numeric port in range, before anything is bound.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		reason := err.Error()
		if ae, ok := errors.AsType[*net.AddrError](err); ok {
			reason = ae.Err
		}
		return userErr(err, listenForm, "cannot listen on %q: %s", addr, reason)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return userErr(err, listenForm, "cannot listen on %q: port %q is not a number from 1 to 65535", addr, port)
	}
	return nil
}

// tcpListenErr explains a failed TCP listen on addr (already checked by
// checkListenAddr).
func tcpListenErr(err error, addr string) error {
	reason := err.Error()
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Err != nil {
		reason = oe.Err.Error()
	}
	hint := listenForm
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		hint = "another program (or another sbx daemon) uses that port: stop it, or pick another port"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		hint = "HOST must be an address of this machine (127.0.0.1 for this machine only)"
	case errors.Is(err, syscall.EACCES):
		hint = "ports below 1024 need privileges: pick a port from 1024 to 65535"
	}
	return userErr(err, hint, "cannot listen on %s: %s", addr, reason)
}

// unixListenErr explains a failed daemon.ListenUnix on socket. custom says
// the user gave --socket, so the folder is theirs to pick, not sbx's
// runtime folder.
func unixListenErr(err error, socket, defaultSocket string, custom bool) error {
	hint := "give --socket PATH in a folder only you can write (such as ~/.sbx/daemon.sock, made mode 0700 if missing)"
	if custom {
		hint = fmt.Sprintf("omit --socket to use %s, or give a path in a folder only you can write, such as ~/.sbx/daemon.sock (made mode 0700 if missing)", defaultSocket)
	}
	if ue, ok := errors.AsType[*paths.UnsafeDirError](err); ok {
		if !custom {
			return userErr(err, hint, "cannot listen on %s: %v", socket, err)
		}
		return userErr(err, hint, "cannot listen on %s: its folder %s %s; a socket's folder must be one only you can write, or another user could swap the socket",
			socket, ue.Dir, ue.Problem)
	}
	if c, derr := net.DialTimeout("unix", socket, time.Second); derr == nil {
		c.Close()
		return userErr(err, "stop the other daemon first, or "+hint, "cannot listen on %s: another daemon already listens there", socket)
	}
	if n := len(socket); n > paths.MaxSocketPath {
		return userErr(err, hint, "cannot listen on %s: the path is %d bytes, over the %d-byte limit of unix sockets", socket, n, paths.MaxSocketPath)
	}
	return userErr(err, hint, "cannot listen on %s: %v", socket, err)
}
