// Package agent is the guest side of sbx: the code of sbx-agent, which runs
// as PID 1 (/init) inside every sandbox VM.
//
// [Init] boots the guest as a sequence of named phases (early mounts,
// kernel modules, root disk, switch root, agent port) and then serves the
// agentapi protocol on the virtio-serial port named "sbx.agent".
// [Server] serves the protocol on any connection, which is how tests run it
// in process over net.Pipe; it starts processes through a [Reaper], the one
// place that waits for children, so that PID 1 can reap orphans without
// racing per-process waits.
//
// The package is Linux-only.
package agent
