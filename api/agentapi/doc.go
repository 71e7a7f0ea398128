// Package agentapi defines the protocol between the host (sbx supervisor) and
// the guest agent (sbx-agent, PID 1 inside the VM).
//
// # Transport
//
// One byte stream (a virtio-serial port; vsock is planned for hosts that have it)
// carries a hashicorp/yamux session. The host is the yamux client and the
// guest is the yamux server. Every operation runs on its own yamux stream,
// opened by the host; the guest never opens streams.
//
// # Frames
//
// A stream carries frames:
//
//	+--------+----------------------+-----------------+
//	| type   | length               | payload         |
//	| 1 byte | 4 bytes, big-endian  | length bytes    |
//	+--------+----------------------+-----------------+
//
// The payload is at most [MaxPayload] bytes (1 MiB). A reader rejects a
// larger length with [ErrFrameTooLarge] before allocating anything, and
// rejects an unknown type with [ErrUnknownFrameType]. Payload encodings per
// type are listed on the [FrameType] constants: JSON for Request, Response,
// Exit and Error; raw bytes for Stdin, Stdout, Stderr and Data; fixed binary
// layouts for Resize and Signal; empty for StdinClose and DataEnd.
//
// # Operations
//
// The host opens a stream and writes one Request frame whose Op names the
// operation and whose matching pointer field carries its arguments. The
// guest answers with one Response frame. Streaming operations (exec,
// copy-in, copy-out) then exchange more frames on the same stream; the exact
// sequence per operation is in docs/protocol.md and on each request type.
// The first operation on a new session must be hello, which checks
// [ProtocolVersion].
package agentapi
