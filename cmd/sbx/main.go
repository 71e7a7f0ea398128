// Command sbx runs AI coding agents in microVM sandboxes.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sbx-dev/sbx/internal/cli"
	"github.com/sbx-dev/sbx/internal/jail"
)

func main() {
	// The VMM's jail is this binary run again (see internal/jail).
	if jail.IsHelper(os.Args) {
		os.Exit(jail.Main())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root, debug := cli.NewRoot(ctx, cli.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr})
	err := root.Execute()
	stop()
	os.Exit(cli.Render(os.Stderr, err, *debug))
}
