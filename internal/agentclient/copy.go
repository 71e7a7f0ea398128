package agentclient

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/api/agentapi/archive"
)

// CopyIn copies hostSrc (file, directory or symlink; "dir/." for a
// directory's contents) into the guest at guestDst with docker cp
// semantics: inside guestDst if it is an existing directory, else as
// guestDst. stream must be fresh; CopyIn closes it. A guest-side failure
// is an error wrapping *agentapi.ErrorInfo (its Code says not-found,
// permission, ...).
func CopyIn(ctx context.Context, stream io.ReadWriteCloser, hostSrc, guestDst string) error {
	if _, err := os.Lstat(hostSrc); err != nil {
		stream.Close()
		return fmt.Errorf("copy %s into the guest: %w", hostSrc, err)
	}
	err := CopyInArchive(ctx, stream, guestDst, func(w io.Writer) error { return archive.Write(w, hostSrc) })
	if err != nil {
		return fmt.Errorf("copy %s to guest %s: %w", hostSrc, guestDst, err)
	}
	return nil
}

// CopyInArchive sends the tar archive write makes (one top-level entry,
// as archive.Write makes it) into the guest at guestDst, with CopyIn's
// semantics; the guest extracts it confined to the copied tree. A failed
// write breaks the stream, so the guest abandons the partial archive.
// stream must be fresh; CopyInArchive closes it.
func CopyInArchive(ctx context.Context, stream io.ReadWriteCloser, guestDst string, write func(io.Writer) error) error {
	defer stream.Close()
	stop := closeOnCancel(ctx, stream)
	defer stop()
	fw := agentapi.NewFrameWriter(stream)
	req := agentapi.Request{Op: agentapi.OpCopyIn, CopyIn: &agentapi.CopyInRequest{Path: guestDst}}
	if err := fw.WriteJSON(agentapi.FrameRequest, req); err != nil {
		return ctxErr(ctx, err)
	}
	dw := agentapi.NewDataWriter(fw)
	if err := write(dw); err != nil {
		return ctxErr(ctx, err)
	}
	if err := dw.Close(); err != nil {
		return ctxErr(ctx, err)
	}
	var resp agentapi.Response
	if err := agentapi.ReadJSON(stream, agentapi.FrameResponse, &resp); err != nil {
		return fmt.Errorf("read response: %w", ctxErr(ctx, err))
	}
	return resp.Err()
}

// CopyOut copies guestSrc out of the guest to hostDst with docker cp
// semantics: inside hostDst if it is an existing directory, else as hostDst
// (whose parent must exist). hostDst is opened one component at a time
// without following symbolic links: a link anywhere in it (the guest can
// plant one in a shared workspace, say ws/dist -> /root/.ssh) is refused
// with an error wrapping archive.ErrDestinationLink that names it, and the
// merge of "dir/." into an existing folder keeps that folder's mode. The
// guest is untrusted: extraction is
// confined to the copied tree (see archive.Extract), so entries with
// absolute or ".." names, a second top-level entry, or paths, hard-link
// targets or mode changes through a symlink (say "link -> .." then
// "link/.bashrc") are refused with an error, and nothing outside the tree
// is created, written, chmodded or linked to. Inside an existing hostDst
// the copy is named after guestSrc (archive.TopName), whatever name the
// guest's archive gives it, and no file keeps set-uid or set-gid bits.
// Entries extracted before a failure stay. stream must be fresh; CopyOut
// closes it.
func CopyOut(ctx context.Context, stream io.ReadWriteCloser, guestSrc, hostDst string) error {
	// The name on the host is the one the command implies, never the
	// archive's; set-id bits are dropped.
	err := CopyOutArchive(ctx, stream, guestSrc, func(r io.Reader) error {
		return archive.Extract(r, hostDst, archive.Options{Name: archive.TopName(guestSrc)})
	})
	if err != nil {
		return fmt.Errorf("copy guest %s to %s: %w", guestSrc, hostDst, err)
	}
	return nil
}

// CopyOutArchive has the guest archive guestSrc and passes the tar
// stream to read; what read leaves unread is drained. The archive is the
// guest's: untrusted. stream must be fresh; CopyOutArchive closes it.
func CopyOutArchive(ctx context.Context, stream io.ReadWriteCloser, guestSrc string, read func(io.Reader) error) error {
	defer stream.Close()
	stop := closeOnCancel(ctx, stream)
	defer stop()
	req := agentapi.Request{Op: agentapi.OpCopyOut, CopyOut: &agentapi.CopyOutRequest{Path: guestSrc}}
	resp, err := roundTrip(stream, req)
	if err != nil {
		return ctxErr(ctx, err)
	}
	if err := resp.Err(); err != nil {
		return err
	}
	dr := agentapi.NewDataReader(stream)
	if err := read(dr); err != nil {
		return ctxErr(ctx, err)
	}
	if err := dr.Drain(); err != nil {
		return ctxErr(ctx, err)
	}
	return nil
}
