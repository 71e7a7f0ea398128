package cli

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newCpCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files between the host and a sandbox",
		Long: `Copy a file or folder into or out of a sandbox. One side is
SANDBOX:/absolute/path, the other a host path. As with docker cp, copying to
an existing folder puts SRC inside it; otherwise DST names the copy. A DST
ending in / must be an existing folder (nothing is replaced or made else).
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
			if srcSB != nil {
				return e.manager().CopyOut(ctx, sb, srcPath, dstPath)
			}
			return e.manager().CopyIn(ctx, sb, srcPath, dstPath)
		},
	}
	return cmd
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
