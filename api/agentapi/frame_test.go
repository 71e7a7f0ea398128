package agentapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	payloads := map[FrameType][]byte{
		FrameStdout:     []byte("hello"),
		FrameStdinClose: nil,
		FrameData:       bytes.Repeat([]byte{7}, MaxPayload),
	}
	order := []FrameType{FrameStdout, FrameStdinClose, FrameData}
	for _, ft := range order {
		if err := WriteFrame(&buf, ft, payloads[ft]); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range order {
		got, p, err := ReadFrame(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if got != want || !bytes.Equal(p, payloads[want]) {
			t.Errorf("frame: got %s (%d bytes), want %s (%d bytes)", got, len(p), want, len(payloads[want]))
		}
	}
	if _, _, err := ReadFrame(&buf); err != io.EOF {
		t.Errorf("at end: got %v, want io.EOF", err)
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	var buf bytes.Buffer
	err := WriteFrame(&buf, FrameData, make([]byte, MaxPayload+1))
	if !errors.Is(err, ErrFrameTooLarge) || buf.Len() != 0 {
		t.Errorf("got %v and %d bytes written, want ErrFrameTooLarge and nothing", err, buf.Len())
	}
}

func TestReadFrameRejects(t *testing.T) {
	huge := []byte{byte(FrameData), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(huge[1:], 0xFFFFFFFF)
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"too large", huge, ErrFrameTooLarge},
		{"unknown type", []byte{0xEE, 0, 0, 0, 0}, ErrUnknownFrameType},
		{"zero type", []byte{0, 0, 0, 0, 0}, ErrUnknownFrameType},
		{"short header", []byte{1, 0}, io.ErrUnexpectedEOF},
		{"short payload", []byte{byte(FrameStdout), 0, 0, 0, 9, 'a'}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ReadFrame(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestJSONFrames(t *testing.T) {
	var buf bytes.Buffer
	req := Request{Op: OpExec, Exec: &ExecRequest{Argv: []string{"ls", "-l"}, TTY: true, Rows: 24, Cols: 80}}
	if err := WriteJSON(&buf, FrameRequest, req); err != nil {
		t.Fatal(err)
	}
	var got Request
	if err := ReadJSON(&buf, FrameRequest, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(req, got); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	// An Error frame where a Response was expected comes back as *ErrorInfo.
	if err := WriteJSON(&buf, FrameError, ErrorInfo{Code: CodeNotFound, Message: "gone"}); err != nil {
		t.Fatal(err)
	}
	err := ReadJSON(&buf, FrameResponse, &Response{})
	if !errors.Is(err, &ErrorInfo{Code: CodeNotFound}) {
		t.Errorf("got %v, want ErrorInfo not-found", err)
	}
	if err := WriteFrame(&buf, FrameStdout, nil); err != nil {
		t.Fatal(err)
	}
	if err := ReadJSON(&buf, FrameResponse, &Response{}); !errors.Is(err, ErrUnexpectedFrame) {
		t.Errorf("got %v, want ErrUnexpectedFrame", err)
	}
}

func TestRequestValidate(t *testing.T) {
	ok := []Request{
		{Op: OpHello, Hello: &HelloRequest{ProtocolVersion: 1}},
		{Op: OpHealth, Health: &HealthRequest{}},
		{Op: OpShutdown, Shutdown: &ShutdownRequest{}},
	}
	for _, r := range ok {
		if err := r.Validate(); err != nil {
			t.Errorf("%s: %v", r.Op, err)
		}
	}
	bad := []Request{
		{Op: "frobnicate"},
		{Op: OpExec},
		{Op: OpHealth, Health: &HealthRequest{}, Exec: &ExecRequest{}},
	}
	for _, r := range bad {
		if err := r.Validate(); err == nil {
			t.Errorf("%+v: validated, want error", r)
		}
	}
}

func TestSizeAndSignal(t *testing.T) {
	s, err := DecodeSize(EncodeSize(Size{Rows: 40, Cols: 132}))
	if err != nil || s != (Size{40, 132}) {
		t.Errorf("size round trip: %v %v", s, err)
	}
	if _, err := DecodeSize([]byte{1}); err == nil {
		t.Error("short resize payload accepted")
	}
	n, err := DecodeSignal(EncodeSignal(15))
	if err != nil || n != 15 {
		t.Errorf("signal round trip: %v %v", n, err)
	}
	if _, err := DecodeSignal(EncodeSignal(0)); err == nil {
		t.Error("signal 0 accepted")
	}
}

func TestDataStream(t *testing.T) {
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	dw := NewDataWriter(fw)
	in := bytes.Repeat([]byte("0123456789"), DataChunk/5)
	if _, err := dw.Write(in); err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(&buf, FrameStdout, []byte("after")); err != nil {
		t.Fatal(err)
	}
	dr := NewDataReader(&buf)
	got, err := io.ReadAll(dr)
	if err != nil || !bytes.Equal(got, in) || !dr.Ended() {
		t.Fatalf("data: %d bytes, err %v, ended %v; want %d bytes", len(got), err, dr.Ended(), len(in))
	}
	// The reader stops at DataEnd: the next frame is intact.
	if ft, p, err := ReadFrame(&buf); err != nil || ft != FrameStdout || string(p) != "after" {
		t.Errorf("frame after data-end: %s %q %v", ft, p, err)
	}
}

func FuzzReadFrame(f *testing.F) {
	// Seeds also live in testdata/fuzz/FuzzReadFrame.
	var b bytes.Buffer
	_ = WriteJSON(&b, FrameRequest, Request{Op: OpHello, Hello: &HelloRequest{ProtocolVersion: ProtocolVersion}})
	f.Add(b.Bytes())
	f.Add([]byte{byte(FrameResize), 0, 0, 0, 4, 0, 24, 0, 80})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			ft, p, err := ReadFrame(r)
			if err != nil {
				return
			}
			if !ft.Valid() || len(p) > MaxPayload {
				t.Fatalf("accepted bad frame %s with %d bytes", ft, len(p))
			}
			// Whatever decodes must re-encode to the same bytes.
			var out bytes.Buffer
			if err := WriteFrame(&out, ft, p); err != nil {
				t.Fatal(err)
			}
			ft2, p2, err := ReadFrame(&out)
			if err != nil || ft2 != ft || !bytes.Equal(p, p2) {
				t.Fatalf("re-encode mismatch")
			}
			switch ft {
			case FrameRequest:
				var req Request
				if DecodeJSON(ft, p, &req) == nil {
					_ = req.Validate()
				}
			case FrameResize:
				_, _ = DecodeSize(p)
			case FrameSignal:
				_, _ = DecodeSignal(p)
			case FrameError:
				_ = DecodeError(p)
			}
		}
	})
}
