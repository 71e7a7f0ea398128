package lifecycle

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// stream opens a stream to sb's guest agent; a sandbox that is not
// running is a Conflict on "state".
func (m *Manager) stream(ctx context.Context, sb *sandbox.Sandbox, session bool) (net.Conn, error) {
	name := sb.Config.Name
	stream, err := supervisor.Client(m.Store, sb).OpenStream(ctx, session)
	if errors.Is(err, controlapi.ErrNotReady) || errors.Is(err, controlapi.ErrUnavailable) {
		e := newErr(Conflict, name, err, "start it first", "sandbox %s is not running", name)
		e.Field = "state"
		return nil, e
	}
	if err != nil {
		return nil, newErr(Failed, name, err, "check it with `sbx ls` and `sbx logs "+name+"`", "cannot reach sandbox %s", name)
	}
	return stream, nil
}

// copyErr is a failed copy: a path the guest does not have is NotFound
// on "path", what else it refused (no permission, a bad archive) Invalid
// on "path"; a broken connection Failed.
func copyErr(ctx context.Context, sb *sandbox.Sandbox, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if le, ok := AsError(err); ok {
		return le
	}
	name := sb.Config.Name
	if ei, ok := errors.AsType[*agentapi.ErrorInfo](err); ok {
		code := Invalid
		if ei.Code == agentapi.CodeNotFound {
			code = NotFound
		}
		e := newErr(code, name, err, "", "copy failed: %v", err)
		e.Field = "path"
		return e
	}
	return newErr(Failed, name, err, "see `sbx logs "+name+"`", "copy failed: %v", err)
}

// CopyIn copies hostSrc into running sb at guestDst with docker cp
// semantics (agentclient.CopyIn). hostSrc's folders are resolved as
// HostSource says, before anything is sent.
func (m *Manager) CopyIn(ctx context.Context, sb *sandbox.Sandbox, hostSrc, guestDst string) error {
	src, err := m.HostSource(hostSrc)
	if err != nil {
		return err
	}
	stream, err := m.stream(ctx, sb, false)
	if err != nil {
		return err
	}
	if err := agentclient.CopyIn(ctx, stream, src, guestDst); err != nil {
		return copyErr(ctx, sb, err)
	}
	return nil
}

// CopyOut copies guestSrc out of running sb to hostDst with docker cp
// semantics (agentclient.CopyOut: confined, set-id bits dropped);
// hostDst is resolved as HostDest says.
func (m *Manager) CopyOut(ctx context.Context, sb *sandbox.Sandbox, guestSrc, hostDst string) error {
	dst, err := m.HostDest(hostDst)
	if err != nil {
		return err
	}
	if err := checkFolderDest(hostDst, dst); err != nil {
		return err
	}
	stream, err := m.stream(ctx, sb, false)
	if err != nil {
		return err
	}
	if err := agentclient.CopyOut(ctx, stream, guestSrc, dst); err != nil {
		return copyErr(ctx, sb, err)
	}
	return nil
}

// Upload sends the tar archive r (one top-level entry, as `docker cp`
// and archive.Write make it) into running sb at guestDst: inside it if
// it is a folder, else as it. The guest extracts it confined to the
// copied tree; nothing on the host is read or written.
func (m *Manager) Upload(ctx context.Context, sb *sandbox.Sandbox, guestDst string, r io.Reader) error {
	stream, err := m.stream(ctx, sb, false)
	if err != nil {
		return err
	}
	err = agentclient.CopyInArchive(ctx, stream, guestDst, func(w io.Writer) error {
		_, err := io.Copy(w, r)
		return err
	})
	if err != nil {
		return copyErr(ctx, sb, err)
	}
	return nil
}

// Download has running sb archive guestSrc and passes the tar stream
// (the guest's, untrusted) to read.
func (m *Manager) Download(ctx context.Context, sb *sandbox.Sandbox, guestSrc string, read func(io.Reader) error) error {
	stream, err := m.stream(ctx, sb, false)
	if err != nil {
		return err
	}
	if err := agentclient.CopyOutArchive(ctx, stream, guestSrc, read); err != nil {
		return copyErr(ctx, sb, err)
	}
	return nil
}

// HostDest is dst with the symbolic links on its way resolved, so a copy
// out (which follows none) lands where the user meant; a link inside a
// workspace of any sandbox of the store is refused instead, Invalid on
// "destination": a guest may have made it (ws/dist -> /root/.ssh). As
// root, only root's own links are followed: a guest may have made one in
// a workspace this store does not know (another user's sandbox, a
// removed one).
//
// A dst ending in "/" (or "/.") names a folder (POSIX, docker cp): the
// result keeps a trailing "/", so the copy (archive.Extract) refuses
// anything but an existing folder there instead of replacing a file.
func (m *Manager) HostDest(dst string) (string, error) {
	p, err := m.hostPath(dst, "destination", false)
	if err == nil && namesFolder(dst) && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p, err
}

// namesFolder reports whether p, as the user wrote it, names a folder:
// it ends in "/" or "/.".
func namesFolder(p string) bool {
	return strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.")
}

// checkFolderDest refuses, before anything is copied, a host destination
// the user wrote as a folder (dst, ending in "/") that is not an existing
// folder where it resolved to (resolved): NotFound or Invalid on
// "destination". Copying there would make or replace a file of that name.
func checkFolderDest(dst, resolved string) error {
	if !namesFolder(dst) {
		return nil
	}
	fi, err := os.Stat(filepath.Clean(resolved))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		e := newErr(NotFound, "", err, "create it first, or drop the trailing / to name the copy "+filepath.Clean(dst),
			"the destination folder %s does not exist", dst)
		e.Field = "destination"
		return e
	case err != nil:
		e := newErr(Invalid, "", err, "", "destination %s: %v", dst, err)
		e.Field = "destination"
		return e
	case !fi.IsDir():
		e := newErr(Invalid, "", nil, "a destination ending in / must be an existing folder; drop the / to replace "+filepath.Clean(dst),
			"%s: not a folder", dst)
		e.Field = "destination"
		return e
	}
	return nil
}

// HostSource is src with the symbolic links of its folders resolved as
// HostDest does (a link in a workspace refused, Invalid on "source");
// src itself, when a link, is copied as a link.
func (m *Manager) HostSource(src string) (string, error) {
	if src == "." || strings.HasSuffix(src, "/.") {
		p, err := m.hostPath(src, "source", false)
		return strings.TrimSuffix(p, "/") + "/.", err
	}
	return m.hostPath(src, "source", true)
}

// hostPath resolves p one link at a time (keepLast: not its last
// component); what is "destination" or "source", for messages.
func (m *Manager) hostPath(p, what string, keepLast bool) (string, error) {
	refuse := func(cause error, hint, format string, args ...any) error {
		e := newErr(Invalid, "", cause, hint, format, args...)
		e.Field = what
		return e
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", refuse(err, "", "%s %s: %v", what, p, err)
	}
	if keepLast {
		if abs == "/" {
			return abs, nil
		}
		dir, err := m.hostPath(filepath.Dir(abs), what, false)
		return filepath.Join(dir, filepath.Base(abs)), err
	}
	workspaces := m.AllWorkspaces(nil)
	inWorkspace := func(p string) bool {
		for _, w := range workspaces {
			if p == w || strings.HasPrefix(p, w+"/") {
				return true
			}
		}
		return false
	}
	// One link at a time, each one's target walked with the same checks.
	cur, rest, hops := "/", strings.Split(strings.TrimPrefix(abs, "/"), "/"), 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		if err != nil {
			// Missing from here on: the copy makes the last one.
			return filepath.Join(append([]string{next}, rest...)...), nil
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if inWorkspace(next) {
			return "", refuse(nil, "give the real path (a link inside a workspace may have been made by the sandbox)",
				"%s %s passes through the symbolic link %s, inside a workspace; sbx cp does not follow it", what, p, next)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 && st.Uid != 0 {
			return "", refuse(nil, "give the "+what+"'s real path (sbx cp as root follows only root's symbolic links)",
				"%s %s passes through the symbolic link %s of uid %d; sbx cp as root does not follow it", what, p, next, st.Uid)
		}
		if hops++; hops > 40 {
			return "", refuse(nil, "", "%s %s: too many symbolic links", what, p)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", refuse(err, "", "%s %s: cannot read the link %s", what, p, next)
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return cur, nil
}
