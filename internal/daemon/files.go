package daemon

import (
	"archive/tar"
	"errors"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/sbx-dev/sbx/internal/lifecycle"
)

// guestPathParam is the request's absolute "path" parameter, or a 400.
func guestPathParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	p := r.URL.Query().Get("path")
	if !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "path", Message: "path must be an absolute path in the sandbox"})
		return "", false
	}
	return p, true
}

// errNotRegular is a raw download of something other than a file.
var errNotRegular = errors.New("not a regular file")

// download answers the sandbox's tar archive of path (one top-level
// entry, as `docker cp` makes it), or with format=raw the bytes of the
// regular file at path.
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandbox(w, r)
	if !ok {
		return
	}
	p, ok := guestPathParam(w, r)
	if !ok {
		return
	}
	format := r.URL.Query().Get("format")
	if format != "" && format != "tar" && format != "raw" {
		writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "format", Message: "format is tar (the default) or raw"})
		return
	}
	started := false
	err := s.M.Download(r.Context(), sb, p, func(rd io.Reader) error {
		if format == "raw" {
			tr := tar.NewReader(rd)
			hdr, err := tr.Next()
			if err != nil {
				return err
			}
			if hdr.Typeflag != tar.TypeReg {
				return errNotRegular
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.FormatInt(hdr.Size, 10))
			started = true
			w.WriteHeader(http.StatusOK)
			_, err = io.Copy(w, tr)
			return err
		}
		w.Header().Set("Content-Type", "application/x-tar")
		started = true
		w.WriteHeader(http.StatusOK)
		_, err := io.Copy(w, rd)
		return err
	})
	switch {
	case err == nil:
	case started:
		// Part of the answer is out: break the connection, so the
		// client sees a cut archive, not a whole one.
		s.Log.Warn("download cut short", "sandbox", sb.Config.Name, "err", err)
		panic(http.ErrAbortHandler)
	case errors.Is(err, errNotRegular):
		writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "path", Message: p + " is not a regular file; download it as a tar archive (no format=raw)"})
	default:
		s.fail(w, err)
	}
}

// upload writes into the sandbox at path the body: a tar archive with
// one top-level entry (Content-Type application/x-tar), placed inside
// path when it is a folder, else as path; or (application/octet-stream)
// the bytes of one file, written as path (mode 0644, owned by the
// sandbox's user), which needs a Content-Length. A tar's entries keep
// their owners, as with `docker cp`.
func (s *Server) upload(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandbox(w, r)
	if !ok {
		return
	}
	p, ok := guestPathParam(w, r)
	if !ok {
		return
	}
	body := io.Reader(r.Body)
	switch ct := strings.TrimSpace(strings.Split(r.Header.Get("Content-Type"), ";")[0]); ct {
	case "application/x-tar":
	case "application/octet-stream":
		name := path.Base(path.Clean(p))
		if name == "/" || name == "." || name == ".." || strings.HasSuffix(p, "/") {
			writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "path", Message: "path must name a file (no / at its end)"})
			return
		}
		if r.ContentLength < 0 {
			writeError(w, http.StatusLengthRequired, ErrorMsg{Code: string(lifecycle.Invalid), Message: "a file upload needs a Content-Length (or send a tar archive)"})
			return
		}
		// Written as path: an existing folder there would take it in
		// under its base name instead (found by the ninth review).
		code, err := s.M.GuestRun(r.Context(), sb, "root", []string{"sh", "-c", `[ ! -d "$1" ]`, "sh", p}, nil, io.Discard, io.Discard)
		if err != nil {
			s.fail(w, err)
			return
		}
		if code != 0 {
			writeError(w, http.StatusConflict, ErrorMsg{Code: string(lifecycle.Conflict), Field: "path", Message: p + " is a folder in the sandbox; name the file to write, or send a tar archive"})
			return
		}
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			// The sandbox's user owns it, as if it had written it.
			err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: r.ContentLength, ModTime: time.Now(),
				Uid: sb.Config.UID, Gid: sb.Config.GID})
			if err == nil {
				var n int64
				n, err = io.CopyN(tw, r.Body, r.ContentLength)
				if err == nil && n != r.ContentLength {
					err = io.ErrUnexpectedEOF
				}
			}
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		defer pr.Close()
		body = pr
	default:
		writeError(w, http.StatusUnsupportedMediaType, ErrorMsg{Code: string(lifecycle.Invalid), Message: "send a tar archive (Content-Type: application/x-tar) or one file (application/octet-stream)"})
		return
	}
	if err := s.M.Upload(r.Context(), sb, p, body); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
