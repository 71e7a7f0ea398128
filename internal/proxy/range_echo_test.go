package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// An endpoint that reflects the request's credential and honours Range
// (http.ServeContent, any static/stored echo): the guest fetches the
// echo in two pieces, neither holding a whole form of the value, and
// joins them.
// Found by the fourth outside review: two Range requests joined an echo.
func TestRangeNeverSplitsEcho(t *testing.T) {
	e := newReviewEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "echo.txt", time.Time{}, strings.NewReader("token="+r.Header.Get("X-Token")))
	}), false)
	ph := e.custom(t, reviewValue)
	get := func(rng string) string {
		req, _ := http.NewRequest(http.MethodGet, "https://api.test/echo", nil)
		req.Header.Set("X-Token", ph)
		req.Header.Set("Range", rng)
		resp, err := e.client(false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	// "token=" is 6 bytes; each piece is shorter than minValueScan (8) of
	// the value or simply not a whole form.
	whole := get("bytes=0-12") + get("bytes=13-")
	if strings.Contains(whole, reviewValue) {
		t.Errorf("two Range requests gave the guest the real value: %q", whole)
	}
}
