package agentapi

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ProtocolVersion is the version of the protocol described by this package.
// The host sends it in hello; the guest refuses a different version. Bump it
// on any incompatible change to frames or messages.
const ProtocolVersion = 1

// MaxPayload is the largest payload a frame may carry, in bytes.
const MaxPayload = 1 << 20

// HeaderSize is the size in bytes of a frame header (type + length).
const HeaderSize = 5

// FrameType identifies the payload of a frame.
type FrameType uint8

// Frame types. The direction and payload encoding of each is given in its
// comment; "host->guest" frames are written by the host only.
const (
	// FrameRequest (host->guest) carries a JSON [Request]; first frame of every stream.
	FrameRequest FrameType = 1
	// FrameResponse (guest->host) carries a JSON [Response].
	FrameResponse FrameType = 2
	// FrameStdin (host->guest) carries raw bytes for the process's stdin.
	FrameStdin FrameType = 3
	// FrameStdinClose (host->guest, empty) closes the process's stdin.
	FrameStdinClose FrameType = 4
	// FrameStdout (guest->host) carries raw bytes the process wrote to stdout
	// (or to its terminal, with a TTY).
	FrameStdout FrameType = 5
	// FrameStderr (guest->host) carries raw bytes the process wrote to stderr
	// (never sent with a TTY).
	FrameStderr FrameType = 6
	// FrameResize (host->guest) carries a terminal size: rows then cols,
	// each a big-endian uint16 (see [EncodeSize]).
	FrameResize FrameType = 7
	// FrameSignal (host->guest) carries a signal number as a big-endian
	// uint32 (see [EncodeSignal]).
	FrameSignal FrameType = 8
	// FrameExit (guest->host) carries a JSON [ExitStatus]; the last frame of
	// an exec, sent after all output frames.
	FrameExit FrameType = 9
	// FrameData (both ways) carries raw bytes of a tar stream.
	FrameData FrameType = 10
	// FrameDataEnd (both ways, empty) ends a tar stream.
	FrameDataEnd FrameType = 11
	// FrameError (guest->host) carries a JSON [ErrorInfo] and aborts a stream
	// that already had a successful Response.
	FrameError FrameType = 12
)

var frameNames = map[FrameType]string{
	FrameRequest:    "request",
	FrameResponse:   "response",
	FrameStdin:      "stdin",
	FrameStdinClose: "stdin-close",
	FrameStdout:     "stdout",
	FrameStderr:     "stderr",
	FrameResize:     "resize",
	FrameSignal:     "signal",
	FrameExit:       "exit",
	FrameData:       "data",
	FrameDataEnd:    "data-end",
	FrameError:      "error",
}

// String returns the frame type's name, or "frame(N)" for an unknown type.
func (t FrameType) String() string {
	if n, ok := frameNames[t]; ok {
		return n
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

// Valid reports whether t is one of the frame types defined above.
func (t FrameType) Valid() bool {
	_, ok := frameNames[t]
	return ok
}

// Sentinel errors of the codec.
var (
	// ErrFrameTooLarge means a frame declared or carried a payload larger
	// than MaxPayload.
	ErrFrameTooLarge = errors.New("frame payload too large")
	// ErrUnknownFrameType means a frame header named no known type.
	ErrUnknownFrameType = errors.New("unknown frame type")
	// ErrUnexpectedFrame means a valid frame arrived where the protocol
	// does not allow it.
	ErrUnexpectedFrame = errors.New("unexpected frame")
)

// WriteFrame writes one frame with a single Write call on w, so that frames
// written by concurrent callers never interleave on writers whose Write is
// atomic (yamux streams, net.Pipe); use [FrameWriter] otherwise. It returns
// ErrFrameTooLarge without writing if payload exceeds MaxPayload, and
// ErrUnknownFrameType for an undefined type.
func WriteFrame(w io.Writer, t FrameType, payload []byte) error {
	if !t.Valid() {
		return fmt.Errorf("write frame: %w: %d", ErrUnknownFrameType, uint8(t))
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("write %s frame of %d bytes: %w", t, len(payload), ErrFrameTooLarge)
	}
	buf := make([]byte, HeaderSize+len(payload))
	buf[0] = byte(t)
	binary.BigEndian.PutUint32(buf[1:HeaderSize], uint32(len(payload)))
	copy(buf[HeaderSize:], payload)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	return nil
}

// ReadFrame reads one frame from r. It validates the header before
// allocating: a length above MaxPayload yields ErrFrameTooLarge and an
// undefined type ErrUnknownFrameType; after either, r is positioned inside
// the bad frame and the stream must be abandoned. At a clean end of stream
// (no byte of a new frame read) it returns io.EOF; a frame cut short yields
// io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (FrameType, []byte, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, nil, io.EOF
		}
		return 0, nil, fmt.Errorf("read frame header: %w", err)
	}
	t := FrameType(hdr[0])
	if !t.Valid() {
		return 0, nil, fmt.Errorf("read frame: %w: %d", ErrUnknownFrameType, hdr[0])
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("read %s frame declaring %d bytes: %w", t, n, ErrFrameTooLarge)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("read %s frame payload: %w", t, err)
	}
	return t, payload, nil
}

// WriteJSON marshals v and writes it as one frame of type t.
func WriteJSON(w io.Writer, t FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s frame: %w", t, err)
	}
	return WriteFrame(w, t, b)
}

// ReadJSON reads one frame, requires its type to be want, and unmarshals its
// payload into v. A frame of another type yields an error wrapping
// ErrUnexpectedFrame, except a FrameError frame, which yields its decoded
// *[ErrorInfo] as the error.
func ReadJSON(r io.Reader, want FrameType, v any) error {
	t, p, err := ReadFrame(r)
	if err != nil {
		return err
	}
	if t != want {
		if t == FrameError {
			return DecodeError(p)
		}
		return fmt.Errorf("%w: got %s, want %s", ErrUnexpectedFrame, t, want)
	}
	return DecodeJSON(t, p, v)
}

// DecodeJSON unmarshals the payload p of a frame of type t into v.
func DecodeJSON(t FrameType, p []byte, v any) error {
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("decode %s frame: %w", t, err)
	}
	return nil
}

// DecodeError turns the payload of a FrameError frame into an error: an
// *[ErrorInfo], or a generic error if the payload is not valid JSON.
func DecodeError(p []byte) error {
	var ei ErrorInfo
	if err := json.Unmarshal(p, &ei); err != nil {
		return fmt.Errorf("decode error frame: %w", err)
	}
	return &ei
}

// FrameWriter serialises frames written by several goroutines onto one
// writer. The zero value is not usable; use [NewFrameWriter].
type FrameWriter struct {
	mu sync.Mutex
	w  io.Writer // guarded by mu
}

// NewFrameWriter returns a FrameWriter writing to w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// WriteFrame writes one frame; safe for concurrent use.
func (fw *FrameWriter) WriteFrame(t FrameType, payload []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return WriteFrame(fw.w, t, payload)
}

// WriteJSON writes v as one JSON frame; safe for concurrent use.
func (fw *FrameWriter) WriteJSON(t FrameType, v any) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return WriteJSON(fw.w, t, v)
}

// Size is a terminal size in character cells.
type Size struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// EncodeSize returns the 4-byte payload of a FrameResize frame.
func EncodeSize(s Size) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b[0:], s.Rows)
	binary.BigEndian.PutUint16(b[2:], s.Cols)
	return b
}

// DecodeSize parses the payload of a FrameResize frame.
func DecodeSize(p []byte) (Size, error) {
	if len(p) != 4 {
		return Size{}, fmt.Errorf("decode resize frame: payload is %d bytes, want 4", len(p))
	}
	return Size{Rows: binary.BigEndian.Uint16(p[0:]), Cols: binary.BigEndian.Uint16(p[2:])}, nil
}

// EncodeSignal returns the 4-byte payload of a FrameSignal frame.
func EncodeSignal(sig int) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(sig))
	return b
}

// DecodeSignal parses the payload of a FrameSignal frame. Numbers outside
// 1..64 (the Linux signal range) are rejected.
func DecodeSignal(p []byte) (int, error) {
	if len(p) != 4 {
		return 0, fmt.Errorf("decode signal frame: payload is %d bytes, want 4", len(p))
	}
	n := binary.BigEndian.Uint32(p)
	if n < 1 || n > 64 {
		return 0, fmt.Errorf("decode signal frame: signal %d out of range", n)
	}
	return int(n), nil
}
