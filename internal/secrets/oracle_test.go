package secrets

import (
	"errors"
	"io"
	"testing"
	"time"
)

// Found by the fifth outside review; fails on the code before its fix.
// A guest sent "[" + known + guess in a chunked body to a server of its
// own and paused: the scanner held back exactly the end that began a
// spelling of a real value, so the server, seeing the guess or not,
// told the guest each next character. What reaches the server before
// more data now depends on the length only, and the held bytes go on
// after blockIdle.
func TestScannerHoldsNoOracle(t *testing.T) {
	const value = "REALSECRETVALUE-0123456789abcdef"
	forms := encodedForms(value, "PH")
	seen := func(guess string) (early, late int) {
		pr, pw := io.Pipe()
		f := newFilterReader(pr, forms, true, func(int) error { return errors.New("blocked") })
		defer f.Close()
		got := make(chan int, 64)
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := f.Read(buf)
				got <- n
				if err != nil {
					close(got)
					return
				}
			}
		}()
		go pw.Write([]byte("[" + guess))
		timeout := time.After(blockIdle / 2)
	early:
		for {
			select {
			case n := <-got:
				early += n
			case <-timeout:
				break early
			}
		}
		timeout = time.After(3 * blockIdle)
		for {
			select {
			case n := <-got:
				late += n
				if early+late == 1+len(guess) {
					pw.Close()
					return early, late
				}
			case <-timeout:
				pw.Close()
				return early, late
			}
		}
	}
	for _, guess := range []string{"R", "REALSEC", "REALSECRETVALUE-0123456789abcde", "UkVBTFNF", "52 45 41"} {
		e1, l1 := seen(guess)
		other := string(rune(guess[0])+1) + guess[1:]
		e2, l2 := seen(other)
		if e1 != e2 {
			t.Errorf("guess %q: %d bytes went on at once, %d for %q of the same length", guess, e1, e2, other)
		}
		if e1+l1 != 1+len(guess) || e2+l2 != 1+len(other) {
			t.Errorf("guess %q: %d+%d bytes after the idle wait, want all %d", guess, e1, l1, 1+len(guess))
		}
	}
}
