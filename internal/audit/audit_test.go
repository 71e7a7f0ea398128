package audit

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLoggerAndReadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			l.Log(Event{SandboxID: "sb1", Sandbox: "one", Host: "example.com", Port: uint16(1000 + i), Path: PathForward, Proto: ProtoHTTPS})
		})
	}
	wg.Wait()
	l.Log(Event{SandboxID: "sb1", Host: "example.com", Port: 80, Path: PathTransparent, Proto: ProtoHTTP,
		Method: "GET", URLPath: "/login?token=SECRET#frag", Allowed: true})
	// Flushed promptly without an explicit Flush.
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := ReadFile(path, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 51 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events on disk after 5s", len(evs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	l.Log(Event{Host: "after.close"}) // dropped, no panic
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "SECRET") || strings.Contains(string(data), "frag") {
		t.Error("query string reached the audit log")
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
	evs, _ := ReadFile(path, 1)
	if len(evs) != 1 || evs[0].URLPath != "/login" || evs[0].Method != "GET" || evs[0].Time.IsZero() {
		t.Errorf("last event = %+v", evs)
	}
	// A torn last line is skipped; appending continues after reopening.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"time":"2026-`)
	f.Close()
	if evs, _ := ReadFile(path, 0); len(evs) != 51 {
		t.Errorf("with a torn line: %d events", len(evs))
	}
	if evs, err := ReadFile(filepath.Join(t.TempDir(), "none"), 0); evs != nil || err != nil {
		t.Errorf("missing file = %v, %v", evs, err)
	}
}

func TestSummarize(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ip := netip.MustParseAddr("93.184.216.34")
	evs := []Event{
		{Time: t0, SandboxID: "a", Sandbox: "one", Host: "example.com", Port: 443, Path: PathForward, Proto: ProtoHTTPS, Allowed: true, Rule: "r1 example.com", Reason: "old"},
		{Time: t0.Add(3 * time.Second), SandboxID: "a", Sandbox: "one", Host: "example.com", Port: 443, Path: PathForward, Proto: ProtoHTTPS, Allowed: true, Rule: "r1 example.com", Reason: "new"},
		{Time: t0.Add(1 * time.Second), SandboxID: "a", Sandbox: "one", Host: "example.com", Port: 443, Path: PathTransparent, Proto: ProtoHTTPS, Allowed: true, Rule: "r1 example.com"},
		{Time: t0.Add(5 * time.Second), SandboxID: "a", Sandbox: "one", IP: ip, Port: 22, Path: PathNetwork, Proto: ProtoTCP, Reason: "no rule matches; default balanced denies"},
		{Time: t0.Add(4 * time.Second), SandboxID: "b", Sandbox: "two", IP: ip, Port: 22, Path: PathNetwork, Proto: ProtoTCP},
		{Time: t0.Add(2 * time.Second), SandboxID: "a", Sandbox: "one", IP: ip, Port: 22, Path: PathNetwork, Proto: ProtoTCP},
	}
	want := []Row{
		{Sandbox: "one", SandboxID: "a", IP: ip, Port: 22, Path: PathNetwork, Proto: ProtoTCP, Reason: "no rule matches; default balanced denies", LastSeen: t0.Add(5 * time.Second), Count: 2},
		{Sandbox: "two", SandboxID: "b", IP: ip, Port: 22, Path: PathNetwork, Proto: ProtoTCP, LastSeen: t0.Add(4 * time.Second), Count: 1},
		{Sandbox: "one", SandboxID: "a", Host: "example.com", Port: 443, Path: PathForward, Proto: ProtoHTTPS, Allowed: true, Rule: "r1 example.com", Reason: "new", LastSeen: t0.Add(3 * time.Second), Count: 2},
		{Sandbox: "one", SandboxID: "a", Host: "example.com", Port: 443, Path: PathTransparent, Proto: ProtoHTTPS, Allowed: true, Rule: "r1 example.com", LastSeen: t0.Add(1 * time.Second), Count: 1},
	}
	if diff := cmp.Diff(want, Summarize(evs), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Summarize (-want +got):\n%s", diff)
	}
	if got := want[0].Target(); got != "93.184.216.34:22" {
		t.Errorf("Target = %q", got)
	}
	if got := (Event{IP: netip.MustParseAddr("2001:db8::1"), Port: 22}).Target(); got != "[2001:db8::1]:22" {
		t.Errorf("Target v6 = %q", got)
	}
	if Summarize(nil) != nil {
		t.Error("Summarize(nil) != nil")
	}
}

// Gap 8: the audit log is bounded in size (rotated once, so at most twice
// MaxBytes) and in rate (a flood leaves one summary line).
func TestRotateAndRateLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := OpenWith(path, nil, Options{MaxBytes: 4 << 10, Rate: 1e6, Burst: 1e6})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		l.Log(Event{Host: fmt.Sprintf("h%d.test", i), Port: 443, Path: PathForward})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, p := range []string{path, Rotated(path)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 4<<10 {
			t.Errorf("%s is %d bytes, over the bound", p, fi.Size())
		}
		total += fi.Size()
	}
	evs, err := ReadFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) == 0 || evs[len(evs)-1].Host != "h499.test" {
		t.Fatalf("after rotation the newest event is missing: %d events", len(evs))
	}
	prev := -1
	for _, ev := range evs {
		var n int
		fmt.Sscanf(ev.Host, "h%d.test", &n)
		if n <= prev {
			t.Fatalf("events out of order across the rotated file: h%d then %s", prev, ev.Host)
		}
		prev = n
	}

	// Rate: a burst of 10, then a flood.
	path2 := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err = OpenWith(path2, nil, Options{Rate: 1, Burst: 10})
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		l.Log(Event{Host: "flood.test"})
	}
	time.Sleep(1100 * time.Millisecond)
	l.Log(Event{Host: "after.test"})
	l.Close()
	evs, _ = ReadFile(path2, 0)
	if len(evs) != 12 || !strings.Contains(evs[10].Reason, "990 events left out") || evs[11].Host != "after.test" {
		t.Errorf("rate-limited log: %d events, summary %q", len(evs), evs[min(10, len(evs)-1)].Reason)
	}
}
