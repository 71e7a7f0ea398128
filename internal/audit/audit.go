// Package audit records network policy decisions: one append-only
// JSON-lines file per sandbox (the supervisor writes <sandbox dir>/audit.jsonl),
// and the aggregation `sbx policy log` prints.
//
// The audit log is not a debug log: each line is one Event, and an Event
// never carries a query string, a header or a body, so no secret can reach
// it through a URL or a request.
package audit

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Path is the way a flow took through the sandbox's network.
type Path string

// Paths.
const (
	PathForward     Path = "forward"     // the explicit proxy (HTTP_PROXY, CONNECT)
	PathTransparent Path = "transparent" // 80/443 steered to the proxy
	PathNetwork     Path = "network"     // other TCP, forwarded by IP:port, or dropped packets
	PathDNS         Path = "dns"         // the built-in resolver
)

// Protocols.
const (
	ProtoTCP   = "tcp"
	ProtoUDP   = "udp"
	ProtoICMP  = "icmp"
	ProtoHTTP  = "http"
	ProtoHTTPS = "https"
)

// Event is one policy decision.
type Event struct {
	Time      time.Time  `json:"time"`
	Sandbox   string     `json:"sandbox,omitempty"` // name
	SandboxID string     `json:"sandboxId,omitempty"`
	Host      string     `json:"host,omitempty"`
	IP        netip.Addr `json:"ip,omitzero"`
	Port      uint16     `json:"port,omitempty"`
	Path      Path       `json:"path"`
	Proto     string     `json:"proto"`
	Allowed   bool       `json:"allowed"`
	// Rule is "<id> <resource>" of the deciding rule, or "" when the
	// default decided.
	Rule   string `json:"rule,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Method and URLPath are set for requests the proxy could read
	// (plain HTTP or terminated HTTPS). URLPath never holds a query string
	// or fragment: Log strips them.
	Method  string `json:"method,omitempty"`
	URLPath string `json:"urlPath,omitempty"`
}

// Target is the destination as people read it: host or IP, with the port.
func (e Event) Target() string {
	h := e.Host
	if h == "" && e.IP.IsValid() {
		h = e.IP.String()
		if e.IP.Is6() && e.Port != 0 {
			h = "[" + h + "]"
		}
	}
	if e.Port != 0 {
		return fmt.Sprintf("%s:%d", h, e.Port)
	}
	return h
}

// flushDelay is how long a logged event may wait in the buffer.
const flushDelay = 100 * time.Millisecond

// Default bounds of a Logger.
const (
	// DefaultMaxBytes is the size at which the file is rotated: it becomes
	// PATH.1 (replacing the previous one) and a new file starts, so the
	// log never takes more than twice this.
	DefaultMaxBytes = 16 << 20
	// DefaultRate and DefaultBurst bound the events written per second: a
	// flood of decisions (a guest opening thousands of connections) is
	// summed up in one line per second instead.
	DefaultRate  = 500
	DefaultBurst = 5000
)

// Options bound a Logger; zero fields take the defaults.
type Options struct {
	MaxBytes int64
	Rate     float64 // events per second
	Burst    int
}

// Logger appends events to one file. It is safe for concurrent use. Log
// only encodes into a memory buffer (written out when it fills, and within
// flushDelay otherwise), so it does not hold up the data path.
type Logger struct {
	log     *slog.Logger
	path    string
	opts    Options
	limiter *rate.Limiter

	mu      sync.Mutex
	f       *os.File      // guarded by mu; nil once closed
	w       *bufio.Writer // guarded by mu
	size    int64         // guarded by mu; bytes in the current file
	dropped int           // guarded by mu; events left out since the last summary
	pending *time.Timer   // guarded by mu; the scheduled flush, if any
	failed  bool          // guarded by mu; a write error was reported
}

// Open opens (creating, mode 0600) the audit file at path for appending,
// with the default bounds. The caller must Close the Logger. log receives
// write errors; nil discards them.
func Open(path string, log *slog.Logger) (*Logger, error) {
	return OpenWith(path, log, Options{})
}

// OpenWith is Open with bounds.
func OpenWith(path string, log *slog.Logger, o Options) (*Logger, error) {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Rate <= 0 {
		o.Rate = DefaultRate
	}
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Logger{log: log, path: path, opts: o, limiter: rate.NewLimiter(rate.Limit(o.Rate), o.Burst)}
	if err := l.openLocked(); err != nil {
		return nil, err
	}
	return l, nil
}

// Path is the file the Logger writes.
func (l *Logger) Path() string { return l.path }

// Rotated is the name of the previous file of the log at path.
func Rotated(path string) string { return path + ".1" }

// Preconditions: l.mu is held (or l is not shared yet).
func (l *Logger) openLocked() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open audit log: %w", err)
	}
	l.f, l.size = f, fi.Size()
	if l.w == nil {
		l.w = bufio.NewWriterSize(f, 64<<10)
	} else {
		l.w.Reset(f)
	}
	return nil
}

// Preconditions: l.mu is held.
func (l *Logger) rotateLocked() error {
	if err := l.w.Flush(); err != nil {
		return err
	}
	if err := l.f.Close(); err != nil {
		return err
	}
	l.f = nil
	if err := os.Rename(l.path, Rotated(l.path)); err != nil {
		return err
	}
	return l.openLocked()
}

// Log appends ev, filling Time when zero and stripping any query string or
// fragment from URLPath. Events logged after Close are dropped, and so are
// events over the rate (the next written one is preceded by a summary of
// how many).
func (l *Logger) Log(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	ev.URLPath = cleanPath(ev.URLPath)
	if !l.limiter.Allow() {
		l.mu.Lock()
		l.dropped++
		l.mu.Unlock()
		return
	}
	line, err := json.Marshal(ev)
	if err != nil {
		return
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if l.dropped > 0 {
		sum, _ := json.Marshal(Event{Time: ev.Time, Sandbox: ev.Sandbox, SandboxID: ev.SandboxID, Path: ev.Path,
			Reason: fmt.Sprintf("audit rate limit: %d events left out", l.dropped)})
		l.dropped = 0
		line = append(append(sum, '\n'), line...)
	}
	if l.size > 0 && l.size+int64(len(line)) > l.opts.MaxBytes {
		if err := l.rotateLocked(); err != nil {
			l.reportLocked(err)
			if l.f == nil {
				return
			}
		}
	}
	if _, err := l.w.Write(line); err != nil {
		l.reportLocked(err)
		return
	}
	l.size += int64(len(line))
	if l.pending == nil {
		l.pending = time.AfterFunc(flushDelay, func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.pending = nil
			if l.f != nil {
				l.reportLocked(l.w.Flush())
			}
		})
	}
}

// Preconditions: l.mu is held.
func (l *Logger) reportLocked(err error) {
	if err != nil && !l.failed {
		l.failed = true
		l.log.Error("audit log write failed; later failures are not reported", "component", "audit", "err", err)
	}
}

// Flush writes buffered events to the file now.
func (l *Logger) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("flush audit log: %w", err)
	}
	return nil
}

// Close flushes and closes the file. It is idempotent.
func (l *Logger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	if l.pending != nil {
		l.pending.Stop()
		l.pending = nil
	}
	err := l.w.Flush()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	if err != nil {
		return fmt.Errorf("close audit log: %w", err)
	}
	return nil
}

// cleanPath drops the query string and fragment of a request path.
func cleanPath(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	return p
}

// ReadFile reads the events of one audit log, its rotated file first,
// oldest first, keeping the last limit events (all when limit <= 0). A
// missing file has no events. Lines that do not decode (a line cut short
// by a crash) are skipped.
func ReadFile(path string, limit int) ([]Event, error) {
	var data []byte
	for _, p := range []string{Rotated(path), path} {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read audit log: %w", err)
		}
		data = append(append(data, b...), '\n')
	}
	var out []Event
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var ev Event
		if json.Unmarshal(line, &ev) != nil {
			continue
		}
		out = append(out, ev)
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

// Row is a group of like events: same sandbox, destination, path, outcome
// and rule.
type Row struct {
	Sandbox   string     `json:"sandbox"`
	SandboxID string     `json:"sandboxId,omitempty"`
	Host      string     `json:"host,omitempty"`
	IP        netip.Addr `json:"ip,omitzero"`
	Port      uint16     `json:"port,omitempty"`
	Path      Path       `json:"path"`
	Proto     string     `json:"proto"`
	Allowed   bool       `json:"allowed"`
	Rule      string     `json:"rule,omitempty"`
	// Reason is the reason of the latest event in the group.
	Reason   string    `json:"reason,omitempty"`
	LastSeen time.Time `json:"lastSeen"`
	Count    int       `json:"count"`
}

// Target is the destination as people read it.
func (r Row) Target() string {
	return Event{Host: r.Host, IP: r.IP, Port: r.Port}.Target()
}

type rowKey struct {
	sandbox, host string
	ip            netip.Addr
	port          uint16
	path          Path
	allowed       bool
	rule          string
}

// Summarize groups events by sandbox, destination (host, or IP when there
// is no host), port, path, outcome and rule, sorted by LastSeen, newest
// first.
func Summarize(events []Event) []Row {
	idx := map[rowKey]int{}
	var rows []Row
	for _, ev := range events {
		k := rowKey{sandbox: cmp.Or(ev.SandboxID, ev.Sandbox), host: ev.Host, port: ev.Port, path: ev.Path, allowed: ev.Allowed, rule: ev.Rule}
		if ev.Host == "" {
			k.ip = ev.IP
		}
		i, ok := idx[k]
		if !ok {
			i = len(rows)
			idx[k] = i
			rows = append(rows, Row{
				Sandbox: ev.Sandbox, SandboxID: ev.SandboxID, Host: ev.Host, IP: k.ip, Port: ev.Port,
				Path: ev.Path, Proto: ev.Proto, Allowed: ev.Allowed, Rule: ev.Rule,
			})
		}
		r := &rows[i]
		r.Count++
		if !ev.Time.Before(r.LastSeen) {
			r.LastSeen = ev.Time
			r.Reason = ev.Reason
			r.Proto = ev.Proto
			if ev.Sandbox != "" {
				r.Sandbox = ev.Sandbox
			}
		}
	}
	slices.SortStableFunc(rows, func(a, b Row) int {
		if c := b.LastSeen.Compare(a.LastSeen); c != 0 {
			return c
		}
		return b.Count - a.Count
	})
	return rows
}
