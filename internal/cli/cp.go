package cli

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/agentclient"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

func newCpCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files between the host and a sandbox",
		Long: `Copy a file or folder into or out of a sandbox. One side is
SANDBOX:/absolute/path, the other a host path. As with docker cp, copying to
an existing folder puts SRC inside it; otherwise DST names the copy.
A stopped sandbox is started first. Copying out never follows a symlink
made in the sandbox to a place outside the copied tree, drops set-uid and
set-gid bits, and names the copy after SRC (or DST), never after what the
sandbox's archive calls it. It refuses a host DST that is, or passes
through, a symbolic link inside a workspace of any sandbox (the sandbox can
make one, say ws/dist -> /root/.ssh): copy to a real folder; links
elsewhere on the way (yours) are followed. Merging SANDBOX:/dir/. into
an existing folder keeps that folder's mode. Copying in reads the folders
below SRC without following links, so the sandbox cannot swap one for a
link to a host folder while the copy runs; the folders on the way to SRC
are resolved like DST's (a link in a workspace refused), and SRC itself,
when a link, is copied as a link.`,
		Example: `  sbx cp ./notes.txt shell-proj:/home/agent/
  sbx cp shell-proj:/var/log/dpkg.log ./`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcSB, srcPath, err := e.splitCpArg(args[0])
			if err != nil {
				return err
			}
			dstSB, dstPath, err := e.splitCpArg(args[1])
			if err != nil {
				return err
			}
			var sb *sandbox.Sandbox
			switch {
			case srcSB != nil && dstSB != nil:
				return userErr(nil, "copy out to the host, then in", "copying between two sandboxes is not supported")
			case srcSB == nil && dstSB == nil:
				return userErr(nil, "write one side as SANDBOX:/path", "neither %q nor %q names a sandbox", args[0], args[1])
			case srcSB != nil:
				sb = srcSB
			default:
				sb = dstSB
			}
			ctx := cmd.Context()
			if err := e.ensureRunning(ctx, sb, startInBackground); err != nil {
				return err
			}
			stream, err := supervisor.Client(e.store, sb).OpenStream(ctx, false)
			if err != nil {
				return userErr(err, "check it with `sbx ls`", "cannot reach sandbox %s", sb.Config.Name)
			}
			defer stream.Close()
			if srcSB != nil {
				if dstPath, err = e.hostDest(dstPath); err != nil {
					return err
				}
				err = agentclient.CopyOut(ctx, stream, srcPath, dstPath)
			} else {
				if srcPath, err = e.hostSource(srcPath); err != nil {
					return err
				}
				err = agentclient.CopyIn(ctx, stream, srcPath, dstPath)
			}
			if err != nil {
				return userErr(nil, "", "copy failed: %v", err)
			}
			return nil
		},
	}
	return cmd
}

// hostDest is dst with the symbolic links on its way resolved, so the
// copy (which follows none) lands where the user meant; a link inside a
// workspace of any sandbox is refused instead: a guest may have made it
// (ws/dist -> /root/.ssh).
func (e *env) hostDest(dst string) (string, error) { return e.hostPath(dst, "destination", false) }

// hostSource is src with the symbolic links of its folders resolved as
// hostDest does (a link in a workspace refused); src itself, when a link,
// is copied as a link.
func (e *env) hostSource(src string) (string, error) {
	if src == "." || strings.HasSuffix(src, "/.") {
		p, err := e.hostPath(src, "source", false)
		return strings.TrimSuffix(p, "/") + "/.", err
	}
	return e.hostPath(src, "source", true)
}

// hostPath resolves p one link at a time (keepLast: not its last
// component); what is "destination" or "source", for messages.
func (e *env) hostPath(dst, what string, keepLast bool) (string, error) {
	abs, err := filepath.Abs(dst)
	if err != nil {
		return "", userErr(err, "", "%s %s", what, dst)
	}
	if keepLast {
		if abs == "/" {
			return abs, nil
		}
		dir, err := e.hostPath(filepath.Dir(abs), what, false)
		return filepath.Join(dir, filepath.Base(abs)), err
	}
	var workspaces []string
	all, _ := e.store.List()
	for _, sb := range all {
		for _, w := range sb.Config.Workspaces {
			workspaces = append(workspaces, w.Path)
		}
	}
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
			return "", userErr(nil, "give the real path (a link inside a workspace may have been made by the sandbox)",
				"%s %s passes through the symbolic link %s, inside a workspace; sbx cp does not follow it", what, dst, next)
		}
		// As root, only root's own links: a guest may have made one in
		// a workspace this store does not know (another user's sandbox,
		// a removed one).
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 && st.Uid != 0 {
			return "", userErr(nil, "give the "+what+"'s real path (sbx cp as root follows only root's symbolic links)",
				"%s %s passes through the symbolic link %s of uid %d; sbx cp as root does not follow it", what, dst, next, st.Uid)
		}
		if hops++; hops > 40 {
			return "", userErr(nil, "", "%s %s: too many symbolic links", what, dst)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", userErr(err, "", "%s %s: cannot read the link %s", what, dst, next)
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return cur, nil
}

// splitCpArg parses SANDBOX:/path. A host path is returned with a nil
// sandbox.
func (e *env) splitCpArg(arg string) (*sandbox.Sandbox, string, error) {
	name, path, ok := strings.Cut(arg, ":")
	if !ok || strings.ContainsRune(name, '/') || name == "" || name == "." || name == ".." {
		return nil, arg, nil
	}
	sb, err := e.getSandbox(name)
	if err != nil {
		return nil, "", err
	}
	if !strings.HasPrefix(path, "/") {
		return nil, "", userErr(nil, "write SANDBOX:/absolute/path", "%q: the path in the sandbox must be absolute", arg)
	}
	return sb, path, nil
}
