package e2b

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/jsonbody"
	"github.com/sbx-dev/sbx/internal/lifecycle"
)

// Connect protocol (JSON): a unary call is a bare JSON message; a
// server stream answers envelopes (flags byte, big-endian length, JSON),
// the last with flag 0x02 carrying {} or {"error": ...}.

const (
	flagEndStream = 0x02
	maxEnvelope   = 16 << 20
)

// connect error codes and their HTTP statuses (connect-go's table).
var rpcStatus = map[string]int{
	"not_found": 404, "already_exists": 409, "invalid_argument": 400, "unauthenticated": 401,
	"unavailable": 503, "internal": 500, "failed_precondition": 400, "permission_denied": 403,
}

func rpcError(w http.ResponseWriter, status int, code, msg string) {
	if s, ok := rpcStatus[code]; ok {
		status = s
	}
	writeJSON(w, status, map[string]string{"code": code, "message": msg})
}

func unary(w http.ResponseWriter, v any) {
	writeJSON(w, http.StatusOK, v)
}

// readEnvelope reads a streaming call's one request message.
func readEnvelope(r io.Reader, v any) error {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("read envelope: %w", err)
	}
	if hdr[0]&0x01 != 0 {
		return fmt.Errorf("compressed envelopes are not supported")
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxEnvelope {
		return fmt.Errorf("envelope of %d bytes is too large", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return fmt.Errorf("read envelope: %w", err)
	}
	return jsonbody.DecodeAllowUnknown(bytes.NewReader(buf), v)
}

// streamWriter writes a server stream's envelopes, one at a time, each
// flushed.
type streamWriter struct {
	mu    sync.Mutex
	w     http.ResponseWriter
	flush func()
}

func newStream(w http.ResponseWriter) *streamWriter {
	w.Header().Set("Content-Type", "application/connect+json")
	w.WriteHeader(http.StatusOK)
	sw := &streamWriter{w: w, flush: func() {}}
	if f, ok := w.(http.Flusher); ok {
		sw.flush = f.Flush
	}
	sw.flush()
	return sw
}

func (s *streamWriter) send(flags byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var hdr [5]byte
	hdr[0] = flags
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(data)))
	if _, err := s.w.Write(append(hdr[:], data...)); err != nil {
		return err
	}
	s.flush()
	return nil
}

func (s *streamWriter) end(code, msg string) {
	if code == "" {
		s.send(flagEndStream, map[string]any{})
		return
	}
	s.send(flagEndStream, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// user is the guest user a request runs as: Basic auth's user name, E2B's
// "user" being the agent user.
func user(r *http.Request) string {
	u, _, ok := r.BasicAuth()
	if !ok || u == "" || u == "user" {
		return "agent"
	}
	return u
}

type processConfig struct {
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args,omitempty"`
	Envs map[string]string `json:"envs,omitempty"`
	Cwd  string            `json:"cwd,omitempty"`
}

type startRequest struct {
	Process processConfig `json:"process"`
	Tag     string        `json:"tag,omitempty"`
	Stdin   bool          `json:"stdin,omitempty"`
}

// eventWriter turns a process's output into data events.
type eventWriter struct {
	s      *streamWriter
	stderr bool
}

func (e eventWriter) Write(p []byte) (int, error) {
	key := "stdout"
	if e.stderr {
		key = "stderr"
	}
	if err := e.s.send(0, map[string]any{"event": map[string]any{"data": map[string]string{key: base64.StdEncoding.EncodeToString(p)}}}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *Server) startProcess(w http.ResponseWriter, r *http.Request, b *box) {
	var req startRequest
	err := readEnvelope(r.Body, &req)
	if err == nil && req.Process.Cmd == "" {
		err = errors.New("process.cmd is empty")
	}
	if err != nil {
		sw := newStream(w)
		sw.end("invalid_argument", fmt.Sprintf("bad start request: %v", err))
		return
	}
	env := []string{}
	for k, v := range b.envs {
		env = append(env, k+"="+v)
	}
	for k, v := range req.Process.Envs {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	b.mu.Lock()
	b.nextPID++
	p := &proc{pid: b.nextPID + 1000, cfg: req.Process, tag: req.Tag, signals: make(chan syscall.Signal, 4)}
	b.procs[p.pid] = p
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.procs, p.pid)
		b.mu.Unlock()
	}()
	// As envd: the process lives until Connect-Timeout-Ms (when given),
	// not only while the client stays.
	ctx := context.WithoutCancel(r.Context())
	if ms, err := strconv.Atoi(r.Header.Get("Connect-Timeout-Ms")); err == nil && ms > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
		defer cancel()
	}
	sw := newStream(w)
	sw.send(0, map[string]any{"event": map[string]any{"start": map[string]any{"pid": p.pid}}})
	argv := append([]string{req.Process.Cmd}, req.Process.Args...)
	st, err := s.M.Exec(ctx, b.sb, lifecycle.ExecRequest{ExecRequest: agentapi.ExecRequest{Argv: argv, Env: env, Dir: req.Process.Cwd, User: user(r)}},
		agentclient.ExecIO{Stdout: eventWriter{sw, false}, Stderr: eventWriter{sw, true}, Signals: p.signals})
	if err != nil {
		code := "unavailable"
		if errors.Is(err, lifecycle.ErrInvalid) {
			code = "invalid_argument" // no such program, user or folder
		}
		sw.end(code, err.Error())
		return
	}
	end := map[string]any{"exitCode": st.Code, "exited": true, "status": fmt.Sprintf("exit status %d", st.Code)}
	if st.Signal != "" {
		end = map[string]any{"exitCode": -1, "exited": false, "status": "signal: " + signalWord(st.Signal), "error": "signal: " + signalWord(st.Signal)}
	} else if st.Code != 0 {
		end["error"] = end["status"]
	}
	sw.send(0, map[string]any{"event": map[string]any{"end": end}})
	sw.end("", "")
}

// signalWord is how Go's os/exec names a signal in "signal: killed".
func signalWord(sig string) string {
	switch strings.TrimPrefix(strings.ToUpper(sig), "SIG") {
	case "KILL", "9":
		return "killed"
	case "TERM", "15":
		return "terminated"
	case "INT", "2":
		return "interrupt"
	}
	return strings.ToLower(sig)
}

func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request, b *box) {
	b.mu.Lock()
	out := []map[string]any{}
	for _, p := range b.procs {
		e := map[string]any{"pid": p.pid, "config": p.cfg}
		if p.tag != "" {
			e["tag"] = p.tag
		}
		out = append(out, e)
	}
	b.mu.Unlock()
	unary(w, map[string]any{"processes": out})
}

func (s *Server) sendSignal(w http.ResponseWriter, r *http.Request, b *box) {
	var req struct {
		Process struct {
			PID uint32 `json:"pid"`
		} `json:"process"`
		Signal json.RawMessage `json:"signal"`
	}
	if err := readJSON(r, &req); err != nil {
		rpcError(w, 400, "invalid_argument", err.Error())
		return
	}
	sig := syscall.SIGKILL
	switch strings.Trim(string(req.Signal), `"`) {
	case "SIGNAL_SIGTERM", "15":
		sig = syscall.SIGTERM
	}
	b.mu.Lock()
	p := b.procs[req.Process.PID]
	b.mu.Unlock()
	if p == nil {
		rpcError(w, 404, "not_found", fmt.Sprintf("process %d not found", req.Process.PID))
		return
	}
	select {
	case p.signals <- sig:
	default:
	}
	unary(w, map[string]any{})
}

// guest runs a shell script in b's guest as the request's user and
// returns its exit code and output.
func (s *Server) guest(r *http.Request, b *box, script string, stdin io.Reader, args ...string) (int, []byte, string, error) {
	var out bytes.Buffer
	var errb limitedBuffer
	argv := append([]string{"sh", "-c", script, "sh"}, args...)
	st, err := s.M.Exec(r.Context(), b.sb, lifecycle.ExecRequest{ExecRequest: agentapi.ExecRequest{Argv: argv, User: user(r)}},
		agentclient.ExecIO{Stdin: stdin, Stdout: &capped{&out, maxFile}, Stderr: &errb})
	return st.Code, out.Bytes(), strings.TrimSpace(errb.String()), err
}

// maxFile caps a file read through /files or a listing (held in memory
// whole); readSlots caps the reads at once.
const maxFile = 64 << 20

var readSlots = make(chan struct{}, 4)

type capped struct {
	b   *bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if c.b.Len()+len(p) > c.max {
		return 0, fmt.Errorf("more than %d bytes", c.max)
	}
	return c.b.Write(p)
}

// Exit codes of the scripts below.
const (
	exitNotFound = 44
	exitExists   = 45
	exitNotDir   = 46
)

// entryFormat prints one entry as find -printf fields, each
// NUL-terminated: type, size, mode, owner, group, mtime, path, target.
const entryFormat = `%y\0%s\0%m\0%u\0%g\0%T@\0%p\0%l\0`

const statScript = `[ -e "$1" ] || [ -L "$1" ] || exit 44; exec find "$1" -maxdepth 0 -printf '` + entryFormat + `'`

const listScript = `[ -e "$1" ] || exit 44; [ -d "$1" ] || exit 46
exec find -H "$1" -mindepth 1 -maxdepth "$2" -printf '` + entryFormat + `'`

// entries parses entryFormat output into EntryInfo values.
func entries(out []byte) []map[string]any {
	f := strings.Split(string(out), "\x00")
	var list []map[string]any
	for i := 0; i+8 <= len(f); i += 8 {
		typ := map[string]string{"f": "FILE_TYPE_FILE", "d": "FILE_TYPE_DIRECTORY", "l": "FILE_TYPE_SYMLINK"}[f[i]]
		if typ == "" {
			continue
		}
		mode, _ := strconv.ParseUint(f[i+2], 8, 32)
		secs, _ := strconv.ParseFloat(f[i+5], 64)
		e := map[string]any{
			"name": path.Base(f[i+6]), "type": typ, "path": f[i+6], "size": f[i+1], "mode": mode,
			"permissions": permString(f[i], uint32(mode)), "owner": f[i+3], "group": f[i+4],
			"modifiedTime": time.Unix(0, int64(secs*1e9)).UTC().Format(time.RFC3339Nano),
		}
		if f[i+7] != "" {
			e["symlinkTarget"] = f[i+7]
		}
		list = append(list, e)
	}
	return list
}

func permString(typ string, mode uint32) string {
	b := []byte("-rwxrwxrwx")
	switch typ {
	case "d":
		b[0] = 'd'
	case "l":
		b[0] = 'l'
	}
	for i := 0; i < 9; i++ {
		if mode&(1<<(8-i)) == 0 {
			b[i+1] = '-'
		}
	}
	return string(b)
}

// decode reads a unary call's request, answering invalid_argument when
// it cannot.
func decode[T any](w http.ResponseWriter, r *http.Request) (T, bool) {
	var v T
	if err := readJSON(r, &v); err != nil {
		rpcError(w, 400, "invalid_argument", err.Error())
		return v, false
	}
	return v, true
}

type pathRequest struct {
	Path  string `json:"path"`
	Depth int    `json:"depth"`
}

// guestPath makes a request path absolute (relative ones are from the
// user's home, as envd's).
func guestPath(p string) string {
	if p == "" || !strings.HasPrefix(p, "/") {
		return path.Join("/home/agent", p)
	}
	return path.Clean(p)
}

func (s *Server) fsCall(w http.ResponseWriter, r *http.Request, b *box, script string, args ...string) ([]byte, bool) {
	code, out, errs, err := s.guest(r, b, script, nil, args...)
	switch {
	case err != nil:
		rpcError(w, 503, "unavailable", err.Error())
	case code == exitNotFound:
		rpcError(w, 404, "not_found", fmt.Sprintf("%s: no such file or folder", args[0]))
	case code == exitExists:
		rpcError(w, 409, "already_exists", fmt.Sprintf("%s exists", args[0]))
	case code == exitNotDir:
		rpcError(w, 400, "invalid_argument", fmt.Sprintf("%s is not a folder", args[0]))
	case code != 0:
		rpcError(w, 500, "internal", errs)
	default:
		return out, true
	}
	return nil, false
}

func (s *Server) listDir(w http.ResponseWriter, r *http.Request, b *box) {
	req, ok := decode[pathRequest](w, r)
	if !ok {
		return
	}
	if req.Depth <= 0 {
		req.Depth = 1
	}
	if out, ok := s.fsCall(w, r, b, listScript, guestPath(req.Path), strconv.Itoa(req.Depth)); ok {
		list := entries(out)
		if list == nil {
			list = []map[string]any{}
		}
		unary(w, map[string]any{"entries": list})
	}
}

func (s *Server) statEntry(w http.ResponseWriter, r *http.Request, b *box, p string) {
	if out, ok := s.fsCall(w, r, b, statScript, p); ok {
		if list := entries(out); len(list) == 1 {
			unary(w, map[string]any{"entry": list[0]})
			return
		}
		rpcError(w, 500, "internal", "stat gave no entry")
	}
}

func (s *Server) stat(w http.ResponseWriter, r *http.Request, b *box) {
	req, ok := decode[pathRequest](w, r)
	if !ok {
		return
	}
	s.statEntry(w, r, b, guestPath(req.Path))
}

func (s *Server) makeDir(w http.ResponseWriter, r *http.Request, b *box) {
	req, ok := decode[pathRequest](w, r)
	if !ok {
		return
	}
	p := guestPath(req.Path)
	if _, ok := s.fsCall(w, r, b, `[ -e "$1" ] && exit 45; mkdir -p -- "$1"`, p); ok {
		s.statEntry(w, r, b, p)
	}
}

func (s *Server) remove(w http.ResponseWriter, r *http.Request, b *box) {
	req, ok := decode[pathRequest](w, r)
	if !ok {
		return
	}
	if _, ok := s.fsCall(w, r, b, `[ -e "$1" ] || [ -L "$1" ] || exit 44; rm -rf -- "$1"`, guestPath(req.Path)); ok {
		unary(w, map[string]any{})
	}
}

func (s *Server) move(w http.ResponseWriter, r *http.Request, b *box) {
	var req struct {
		Source      string `json:"source"`
		Destination string `json:"destination"`
	}
	if err := readJSON(r, &req); err != nil {
		rpcError(w, 400, "invalid_argument", err.Error())
		return
	}
	dst := guestPath(req.Destination)
	if _, ok := s.fsCall(w, r, b, `[ -e "$1" ] || [ -L "$1" ] || exit 44; mkdir -p -- "$(dirname -- "$2")" && mv -- "$1" "$2"`, guestPath(req.Source), dst); ok {
		s.statEntry(w, r, b, dst)
	}
}

// filesUser is /files' user: its username parameter, else Basic auth's.
func filesUser(r *http.Request) *http.Request {
	if u := r.URL.Query().Get("username"); u != "" && u != "user" {
		r = r.Clone(r.Context())
		r.SetBasicAuth(u, "")
	}
	return r
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request, b *box) {
	select {
	case readSlots <- struct{}{}:
		defer func() { <-readSlots }()
	case <-r.Context().Done():
		return
	}
	r = filesUser(r)
	p := guestPath(r.URL.Query().Get("path"))
	code, out, errs, err := s.guest(r, b, `[ -e "$1" ] || exit 44; [ -d "$1" ] && exit 46; exec cat -- "$1"`, nil, p)
	switch {
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadGateway)
	case code == exitNotFound:
		writeJSON(w, http.StatusNotFound, map[string]any{"code": 404, "message": p + ": no such file"})
	case code == exitNotDir:
		writeJSON(w, http.StatusBadRequest, map[string]any{"code": 400, "message": p + " is a folder"})
	case code != 0:
		writeJSON(w, http.StatusInternalServerError, map[string]any{"code": 500, "message": errs})
	default:
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		w.WriteHeader(http.StatusOK)
		w.Write(out)
	}
}

const writeScript = `mkdir -p -- "$(dirname -- "$1")" && exec cat > "$1"`

func (s *Server) writeFile(w http.ResponseWriter, r *http.Request, b *box) {
	r = filesUser(r)
	type written struct {
		Path string `json:"path"`
		Name string `json:"name"`
		Type string `json:"type"`
	}
	var done []written
	put := func(p string, data io.Reader) bool {
		p = guestPath(p)
		code, _, errs, err := s.guest(r, b, writeScript, data, p)
		if err != nil || code != 0 {
			msg := errs
			if err != nil {
				msg = err.Error()
			}
			writeJSON(w, http.StatusInternalServerError, map[string]any{"code": 500, "message": p + ": " + msg})
			return false
		}
		done = append(done, written{Path: p, Name: path.Base(p), Type: "file"})
		return true
	}
	body := http.MaxBytesReader(w, r.Body, maxFile)
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]any{"code": 400, "message": err.Error()})
				return
			}
			p := r.URL.Query().Get("path")
			if p == "" {
				p = partPath(part)
			}
			if p == "" {
				writeJSON(w, http.StatusBadRequest, map[string]any{"code": 400, "message": "a part without a path"})
				return
			}
			if !put(p, part) {
				return
			}
		}
	} else if !put(r.URL.Query().Get("path"), body) {
		return
	}
	if len(done) == 0 {
		writeJSON(w, http.StatusBadRequest, map[string]any{"code": 400, "message": "no file in the request"})
		return
	}
	writeJSON(w, http.StatusOK, done)
}

// partPath is the file name a multipart part carries, as sent: the SDK
// writes several files with their full paths there, which
// multipart.Part.FileName would cut to the base name.
func partPath(part *multipart.Part) string {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}
