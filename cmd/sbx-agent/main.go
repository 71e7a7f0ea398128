// Command sbx-agent is the guest agent of sbx: PID 1 (/init) of the
// initramfs of every sandbox VM. It boots the guest and serves the
// agentapi protocol on the "sbx.agent" virtio-serial port; all of its
// logic lives in internal/agent. Build it static: CGO_ENABLED=0.
package main

import (
	"fmt"
	"os"

	"github.com/sbx-dev/sbx/internal/agent"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "sbx-agent: must run as PID 1 (/init) inside an sbx guest VM; it is started by the sandbox, not by hand")
		os.Exit(2)
	}
	agent.Init()
}
