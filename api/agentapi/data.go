package agentapi

import (
	"fmt"
	"io"
)

// DataChunk is the payload size the data writers use for Data frames.
const DataChunk = 64 << 10

// DataWriter turns writes into Data frames. Close writes the DataEnd frame;
// it does not close the underlying writer.
type DataWriter struct {
	w      *FrameWriter
	closed bool
}

// NewDataWriter returns a DataWriter writing frames through w.
func NewDataWriter(w *FrameWriter) *DataWriter { return &DataWriter{w: w} }

// Write sends p as one or more Data frames of at most DataChunk bytes.
func (d *DataWriter) Write(p []byte) (int, error) {
	if d.closed {
		return 0, fmt.Errorf("write data: %w", io.ErrClosedPipe)
	}
	n := 0
	for len(p) > 0 {
		c := min(len(p), DataChunk)
		if err := d.w.WriteFrame(FrameData, p[:c]); err != nil {
			return n, err
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

// Close writes DataEnd once; later calls do nothing.
func (d *DataWriter) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	return d.w.WriteFrame(FrameDataEnd, nil)
}

// DataReader reads the bytes of consecutive Data frames from r and reports
// io.EOF at DataEnd. An Error frame yields its *[ErrorInfo]; any other
// frame yields ErrUnexpectedFrame; an end of stream before DataEnd yields
// io.ErrUnexpectedEOF.
type DataReader struct {
	r   io.Reader
	buf []byte
	err error
}

// NewDataReader returns a DataReader reading frames from r.
func NewDataReader(r io.Reader) *DataReader { return &DataReader{r: r} }

// Read implements io.Reader.
func (d *DataReader) Read(p []byte) (int, error) {
	for len(d.buf) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		t, payload, err := ReadFrame(d.r)
		switch {
		case err == io.EOF:
			d.err = fmt.Errorf("read data: stream ended before data-end: %w", io.ErrUnexpectedEOF)
		case err != nil:
			d.err = fmt.Errorf("read data: %w", err)
		case t == FrameData:
			d.buf = payload
		case t == FrameDataEnd:
			d.err = io.EOF
		case t == FrameError:
			d.err = DecodeError(payload)
		default:
			d.err = fmt.Errorf("read data: %w: got %s", ErrUnexpectedFrame, t)
		}
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	return n, nil
}

// Drain discards data up to and including DataEnd. It returns nil at
// DataEnd and the terminating error otherwise.
func (d *DataReader) Drain() error {
	_, err := io.Copy(io.Discard, d)
	return err
}

// Ended reports whether the reader has seen DataEnd.
func (d *DataReader) Ended() bool { return d.err == io.EOF && len(d.buf) == 0 }
