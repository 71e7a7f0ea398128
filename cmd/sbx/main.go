// Command sbx runs AI coding agents in microVM sandboxes.
package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/sbx-dev/sbx/internal/cli"
	"github.com/sbx-dev/sbx/internal/jail"
)

func main() {
	// The VMM's jail is this binary run again (see internal/jail).
	if jail.IsHelper(os.Args) {
		os.Exit(jail.Main())
	}
	// git runs the remote helper of sbx::SANDBOX URLs as git-remote-sbx
	// (a link to this binary; see internal/clone).
	if filepath.Base(os.Args[0]) == "git-remote-sbx" {
		os.Args = append([]string{"sbx", "git-remote"}, os.Args[1:]...)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root, debug := cli.NewRoot(ctx, cli.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr})
	err := root.Execute()
	stop()
	os.Exit(cli.Render(os.Stderr, err, *debug))
}
