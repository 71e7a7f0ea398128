package clone

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
)

// maxPktPayload is the largest pkt-line payload (65520 bytes with its
// 4-byte length).
const maxPktPayload = 65516

// FilterPackets copies the guest's upload-pack output, a stream of git
// pkt-lines, from src to dst, passing every packet through except the
// ones git prints on the user's terminal: sideband progress (band 2) and
// error (band 3) messages, which git shows as "remote: ...", and "ERR"
// packets. Their text goes through escape, so a guest (whose git, hooks
// and config it controls) cannot send the terminal escape sequences.
// Pack data (band 1) and the protocol's own lines are untouched; an
// escaped message too long for one packet is split across several of
// its band (an ERR one is cut). A malformed length is an error.
func FilterPackets(dst io.Writer, src io.Reader, escape func([]byte) []byte) error {
	br := bufio.NewReaderSize(src, 64<<10)
	bw := bufio.NewWriterSize(dst, 64<<10)
	var hdr [4]byte
	buf := make([]byte, maxPktPayload)
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if err == io.EOF {
				return bw.Flush()
			}
			bw.Flush()
			return err
		}
		n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
		if err != nil || (n > 2 && n < 4) || n > maxPktPayload+4 {
			bw.Flush()
			return fmt.Errorf("git upload-pack in the sandbox sent a malformed packet length %q", hdr[:])
		}
		if n <= 2 { // flush, delimiter, response end
			bw.Write(hdr[:])
			// git waits on a flush for its next step: do not hold it.
			if err := bw.Flush(); err != nil {
				return err
			}
			continue
		}
		p := buf[:n-4]
		if _, err := io.ReadFull(br, p); err != nil {
			bw.Flush()
			return err
		}
		switch {
		case len(p) > 0 && (p[0] == 2 || p[0] == 3):
			msg := escape(p[1:])
			for first := true; first || len(msg) > 0; first = false {
				k := min(len(msg), maxPktPayload-1)
				writePkt(bw, p[0], msg[:k])
				msg = msg[k:]
			}
		case len(p) >= 4 && string(p[:4]) == "ERR ":
			msg := escape(p[4:])
			if len(msg) > maxPktPayload-4 {
				msg = msg[:maxPktPayload-4]
			}
			fmt.Fprintf(bw, "%04xERR ", len(msg)+8)
			bw.Write(msg)
		default:
			bw.Write(hdr[:])
			bw.Write(p)
		}
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
}

func writePkt(w *bufio.Writer, band byte, p []byte) {
	fmt.Fprintf(w, "%04x", len(p)+5)
	w.WriteByte(band)
	w.Write(p)
}
