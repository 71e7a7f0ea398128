// Package agentclient is the host side of the agentapi protocol: it runs the
// yamux client over the agent connection, checks the protocol version, and
// performs operations (call, exec, copy) on streams.
//
// The operation functions work on any already-open stream, not only on
// streams of a Client, so a supervisor can splice a CLI's unix-socket
// connection onto a yamux stream and the CLI can drive the operation itself.
package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/hashicorp/yamux"

	"github.com/sbx-dev/sbx/api/agentapi"
)

// ErrVersionMismatch means the guest agent speaks another protocol version
// than this host; the guest image (initramfs) and sbx must be upgraded
// together.
var ErrVersionMismatch = errors.New("guest agent protocol version mismatch")

// ErrClosed means the client or its session is closed.
var ErrClosed = errors.New("agent connection closed")

// Client is a yamux session to a guest agent. It is safe for concurrent
// use; each operation runs on its own stream.
type Client struct {
	sess  *yamux.Session
	log   *slog.Logger
	hello agentapi.HelloResponse

	closeOnce sync.Once
	closeErr  error
}

// Dial starts a yamux client session on conn, opens a stream and performs
// hello. It returns an error wrapping ErrVersionMismatch if the guest
// speaks another ProtocolVersion. On success the Client owns conn (Close
// closes it); on failure conn is closed too. ctx bounds the handshake only.
func Dial(ctx context.Context, conn net.Conn, log *slog.Logger) (*Client, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	sess, err := yamux.Client(conn, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start yamux client: %w", err)
	}
	c := &Client{sess: sess, log: log}
	hello, err := c.handshake(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.hello = hello
	log.Debug("guest agent connected", "component", "agentclient",
		"protocol_version", hello.ProtocolVersion, "kernel", hello.KernelRelease, "boot_id", hello.BootID)
	return c, nil
}

func (c *Client) handshake(ctx context.Context) (agentapi.HelloResponse, error) {
	stream, err := c.OpenStream(ctx)
	if err != nil {
		return agentapi.HelloResponse{}, fmt.Errorf("hello: %w", err)
	}
	defer stream.Close()
	resp, err := Call(ctx, stream, agentapi.Request{
		Op:    agentapi.OpHello,
		Hello: &agentapi.HelloRequest{ProtocolVersion: agentapi.ProtocolVersion},
	})
	if err != nil {
		return agentapi.HelloResponse{}, fmt.Errorf("hello: %w", err)
	}
	if resp.Hello == nil {
		return agentapi.HelloResponse{}, fmt.Errorf("hello: guest response carries no hello: %w", resp.Err())
	}
	if resp.Hello.ProtocolVersion != agentapi.ProtocolVersion || resp.Code == agentapi.CodeVersion {
		return *resp.Hello, fmt.Errorf("%w: host speaks %d, guest speaks %d; rebuild the guest boot assets with this sbx version",
			ErrVersionMismatch, agentapi.ProtocolVersion, resp.Hello.ProtocolVersion)
	}
	if err := resp.Err(); err != nil {
		return *resp.Hello, fmt.Errorf("hello: %w", err)
	}
	return *resp.Hello, nil
}

// Info returns what the guest said in hello.
func (c *Client) Info() agentapi.HelloResponse { return c.hello }

// OpenStream opens a new stream for one operation. The caller closes it
// (the operation functions that take an io.ReadWriteCloser do so
// themselves). It fails with an error wrapping ErrClosed once the session is
// closed.
func (c *Client) OpenStream(ctx context.Context) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open agent stream: %w", err)
	}
	type result struct {
		s   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.sess.Open()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			if c.sess.IsClosed() {
				return nil, fmt.Errorf("open agent stream: %w: %w", ErrClosed, r.err)
			}
			return nil, fmt.Errorf("open agent stream: %w", r.err)
		}
		return r.s, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
		}()
		return nil, fmt.Errorf("open agent stream: %w", ctx.Err())
	}
}

// Done returns a channel closed when the session ends (Close, or the
// connection broke).
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// Close ends the session and closes the connection. It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		if err := c.sess.Close(); err != nil {
			c.closeErr = fmt.Errorf("close agent session: %w", err)
		}
	})
	return c.closeErr
}

// closeOnCancel closes stream when ctx is done, if it can be closed, to
// unblock reads and writes. The returned stop function must be called.
func closeOnCancel(ctx context.Context, stream any) func() bool {
	cl, ok := stream.(io.Closer)
	if !ok {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, func() { cl.Close() })
}

// ctxErr prefers the context's error when the context ended the operation.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// Call sends req on stream and reads the Response, for the ops whose whole
// exchange is one request and one response (hello, setup, shutdown,
// health). A transport failure is returned as the error; a guest-side
// failure comes back as a Response with OK=false (resp.Err() turns it into
// an *agentapi.ErrorInfo). Call does not close stream, except when ctx is
// cancelled and stream is an io.Closer, to unblock it.
func Call(ctx context.Context, stream io.ReadWriter, req agentapi.Request) (agentapi.Response, error) {
	switch req.Op {
	case agentapi.OpExec, agentapi.OpCopyIn, agentapi.OpCopyOut:
		return agentapi.Response{}, fmt.Errorf("call %s: streaming op, use its own function", req.Op)
	}
	if err := req.Validate(); err != nil {
		return agentapi.Response{}, fmt.Errorf("call %s: %w", req.Op, err)
	}
	stop := closeOnCancel(ctx, stream)
	defer stop()
	resp, err := roundTrip(stream, req)
	if err != nil {
		return agentapi.Response{}, fmt.Errorf("call %s: %w", req.Op, ctxErr(ctx, err))
	}
	return resp, nil
}

func roundTrip(stream io.ReadWriter, req agentapi.Request) (agentapi.Response, error) {
	if err := agentapi.WriteJSON(stream, agentapi.FrameRequest, req); err != nil {
		return agentapi.Response{}, err
	}
	var resp agentapi.Response
	if err := agentapi.ReadJSON(stream, agentapi.FrameResponse, &resp); err != nil {
		if err == io.EOF {
			err = fmt.Errorf("guest closed the stream without a response: %w", io.ErrUnexpectedEOF)
		}
		return agentapi.Response{}, err
	}
	return resp, nil
}
