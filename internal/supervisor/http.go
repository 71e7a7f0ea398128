package supervisor

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/sbx-dev/sbx/api/controlapi"
)

func (s *Supervisor) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	mux.HandleFunc("POST /v1/stop", s.handleStop)
	mux.HandleFunc("POST /v1/detach", s.handleDetach)
	mux.HandleFunc("POST /v1/stream", s.handleStream)
	mux.HandleFunc("GET /v1/ports", s.handlePorts)
	mux.HandleFunc("POST /v1/ports", s.handlePublish)
	return mux
}

func (s *Supervisor) status() controlapi.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := controlapi.Status{
		ID:            s.sb.Config.ID,
		Name:          s.sb.Config.Name,
		State:         s.state,
		Error:         s.errText,
		Phase:         s.phase,
		Phases:        append([]controlapi.Phase(nil), s.phases...),
		Notes:         append([]string(nil), s.notes...),
		Detached:      s.detached,
		Sessions:      s.sessions,
		Accel:         s.boot.Accel,
		KernelRelease: s.hello.KernelRelease,
		BootID:        s.hello.BootID,
		Share:         string(s.share),
		ShareWhy:      s.shareWhy,
	}
	if s.inst != nil {
		st.VMMPID = s.inst.PID()
	}
	return st
}

func (s *Supervisor) handleStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.status())
}

func (s *Supervisor) handleStop(w http.ResponseWriter, r *http.Request) {
	s.requestStop()
	select {
	case <-s.downc:
		w.WriteHeader(http.StatusOK)
	case <-r.Context().Done():
	}
}

func (s *Supervisor) handleDetach(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	already := s.detached
	s.detached = true
	s.mu.Unlock()
	if !already {
		// recordRunning writes only once the VM runs; it waits for a
		// markRunning under way, which may have read the old flag.
		s.recordRunning()
	}
	w.WriteHeader(http.StatusOK)
}

// handleStream upgrades the connection and splices it onto a new agent
// stream.
func (s *Supervisor) handleStream(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != controlapi.UpgradeProtocol {
		controlapi.WriteError(w, http.StatusBadRequest, controlapi.Error{Error: "missing Upgrade: " + controlapi.UpgradeProtocol})
		return
	}
	session := r.URL.Query().Get("session") == "1"
	// Checking the state and counting the session happen under one lock,
	// so a session cannot slip in while the last one ends and stops the VM.
	s.mu.Lock()
	client, state := s.client, s.state
	if client == nil || state != controlapi.StateRunning {
		s.mu.Unlock()
		controlapi.WriteError(w, http.StatusServiceUnavailable, controlapi.Error{Error: "sandbox is " + string(state), Code: controlapi.CodeNotReady})
		return
	}
	if session {
		s.sessions++
	}
	s.mu.Unlock()
	ok := false
	defer func() {
		if !ok && session {
			s.endSession()
		}
	}()
	stream, err := client.OpenStream(r.Context())
	if err != nil {
		controlapi.WriteError(w, http.StatusServiceUnavailable, controlapi.Error{Error: "open agent stream: " + err.Error(), Code: controlapi.CodeNotReady})
		return
	}
	hj, canHijack := w.(http.Hijacker)
	if !canHijack {
		stream.Close()
		controlapi.WriteError(w, http.StatusInternalServerError, controlapi.Error{Error: "connection cannot be upgraded", Code: controlapi.CodeInternal})
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		stream.Close()
		return
	}
	ok = true
	_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+controlapi.UpgradeProtocol+"\r\n\r\n")
	go func() {
		splice(conn, brw.Reader, stream)
		if session {
			s.endSession()
		}
	}()
}

func (s *Supervisor) endSession() {
	s.mu.Lock()
	s.sessions--
	s.idleSince = time.Now()
	last := s.sessions == 0 && !s.detached && s.state == controlapi.StateRunning
	if last {
		s.state = controlapi.StateStopping
	}
	s.mu.Unlock()
	if last {
		s.log.Info("last session ended; stopping", "component", "supervisor")
		s.requestStop()
	}
}

// splice copies both ways between the client conn (read through r, which
// may hold buffered bytes) and the agent stream. When the guest ends its
// side, the client's write side is half-closed so it reads everything
// (closing a unix socket with unread input would reset the peer), and both
// are closed once the client closes too, or after a grace period.
func splice(conn net.Conn, r io.Reader, stream net.Conn) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			conn.Close()
			stream.Close()
		})
	}
	fromClient := make(chan struct{})
	fromGuest := make(chan struct{})
	go func() {
		_, _ = io.Copy(stream, r)
		close(fromClient)
	}()
	go func() {
		_, _ = io.Copy(conn, stream)
		close(fromGuest)
	}()
	select {
	case <-fromClient:
	case <-fromGuest:
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		select {
		case <-fromClient:
		case <-time.After(5 * time.Second):
		}
	}
	closeBoth()
	<-fromClient
	<-fromGuest
}
