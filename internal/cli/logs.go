package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/sbx-dev/sbx/internal/sandbox"
)

func newLogsCmd(e *env) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs SANDBOX [-f]",
		Short: "Show a sandbox's VM console and supervisor log",
		Long: `Print the guest console of the sandbox's last boot (kernel messages and the
guest agent's log) and then the supervisor's log. With -f, keep printing the
console as it grows until interrupted.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := e.getSandbox(args[0])
			if err != nil {
				return err
			}
			if !follow {
				for _, f := range []struct{ title, name string }{
					{"console", sandbox.ConsoleLog},
					{"supervisor", sandbox.SupervisorLog},
				} {
					fmt.Fprintf(e.stdout, "==> %s (%s) <==\n", f.title, sb.Path(f.name))
					if err := copyFile(e.stdout, sb.Path(f.name)); err != nil {
						fmt.Fprintf(e.stdout, "(%v)\n", err)
					}
				}
				return nil
			}
			return followFile(cmd, e.stdout, sb.Path(sandbox.ConsoleLog))
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the console")
	return cmd
}

func copyFile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("empty")
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// followFile prints path and then what is appended to it, reopening it when
// a new boot replaces it, until the command's context ends.
func followFile(cmd *cobra.Command, w io.Writer, path string) error {
	ctx := cmd.Context()
	var f *os.File
	var ino uint64
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		if st, err := os.Stat(path); err == nil {
			if f == nil || inode(st) != ino {
				if f != nil {
					f.Close()
				}
				f, err = os.Open(path)
				if err == nil {
					ino = inode(st)
				}
			}
		}
		if f != nil {
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if _, werr := w.Write(buf[:n]); werr != nil {
						return werr
					}
				}
				if err != nil || n == 0 {
					break
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
