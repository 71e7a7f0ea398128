package cli

import (
	"bytes"
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
guest agent's log) and then the supervisor's log. With -f, print both as they
grow, each line prefixed with its source, until interrupted or until the
sandbox has stopped.`,
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
			return e.followLogs(cmd, sb)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the console and the supervisor log")
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
	// The console is the guest's: its bytes reach the terminal only
	// through terminalWriter (no escape sequences, CRLF read as LF).
	tw := &terminalWriter{w: w}
	if _, err := io.Copy(tw, f); err != nil {
		return err
	}
	return tw.Flush()
}

// follower tails one file, reopening it when a new boot replaces it.
type follower struct {
	path   string
	prefix string
	f      *os.File
	ino    uint64
	off    int64
	part   []byte // an unfinished last line
}

// poll prints what was appended since the last call, line by line.
func (fl *follower) poll(w io.Writer) error {
	st, err := os.Stat(fl.path)
	if err != nil {
		return nil
	}
	if fl.f == nil || inode(st) != fl.ino || st.Size() < fl.off {
		if fl.f != nil {
			fl.f.Close()
		}
		f, err := os.Open(fl.path)
		if err != nil {
			return nil
		}
		fl.f, fl.ino, fl.off, fl.part = f, inode(st), 0, nil
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := fl.f.Read(buf)
		fl.off += int64(n)
		data := append(fl.part, buf[:n]...)
		for {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				break
			}
			// The line with its \n: a \r before it is dropped, any other
			// control byte escaped (appendTerminalSafe).
			line := appendTerminalSafe([]byte(fl.prefix), data[:i+1])
			if _, werr := w.Write(line); werr != nil {
				return werr
			}
			data = data[i+1:]
		}
		fl.part = append([]byte(nil), data...)
		if err != nil || n == 0 {
			return nil
		}
	}
}

func (fl *follower) close() {
	if fl.f != nil {
		fl.f.Close()
	}
}

// followLogs prints the console and the supervisor log as they grow, each
// line prefixed with its source, until the command is interrupted, or
// shortly after the sandbox stops.
func (e *env) followLogs(cmd *cobra.Command, sb *sandbox.Sandbox) error {
	ctx := cmd.Context()
	fls := []*follower{
		{path: sb.Path(sandbox.ConsoleLog), prefix: "console    | "},
		{path: sb.Path(sandbox.SupervisorLog), prefix: "supervisor | "},
	}
	defer func() {
		for _, fl := range fls {
			fl.close()
		}
	}()
	stoppedPolls := 0
	for {
		for _, fl := range fls {
			if err := fl.poll(e.stdout); err != nil {
				return err
			}
		}
		if st, err := e.store.Status(sb); err == nil && st.Status != sandbox.StatusRunning && st.Status != sandbox.StatusStarting && st.Status != sandbox.StatusStopping {
			// Not running: drain once more, then stop following.
			if stoppedPolls++; stoppedPolls > 1 {
				return nil
			}
		} else {
			stoppedPolls = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
