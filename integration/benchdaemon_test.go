package integration

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/daemon"
)

// firstByte is a writer that closes got on its first write.
type firstByte struct {
	once sync.Once
	got  chan struct{}
}

func (f *firstByte) Write(p []byte) (int, error) {
	f.once.Do(func() { close(f.got) })
	return len(p), nil
}

// BenchmarkDaemon: through `sbx daemon`'s API, a create (snapshot start)
// and the first output of a command in it, against `sbx run` of a new
// sandbox to its first output, in the same run; 10 creates at once
// against 10 one after the other (wall time); the daemon's memory with
// 10 idle sandboxes against with none.
func BenchmarkDaemon(b *testing.B) {
	h := newHarness(b)
	ws := workspace(b)
	sock, _, pid := startDaemon(b, h, "")
	c := daemon.UnixClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// Warm: the template and its snapshot.
	h.mustSbx(runArgs([]string{"--rm"}, "warm", ws, "true")...)
	apiFirst := func(name string) time.Duration {
		start := time.Now()
		if _, err := c.Create(ctx, daemon.CreateRequest{Name: name, Workspace: ws}); err != nil {
			b.Fatal(err)
		}
		fb := &firstByte{got: make(chan struct{})}
		done := make(chan error, 1)
		go func() {
			_, err := c.Exec(ctx, name, daemon.ExecRequest{Argv: []string{"echo", "ready"}}, fb, io.Discard)
			done <- err
		}()
		select {
		case <-fb.got:
		case err := <-done:
			b.Fatalf("exec in %s: no output (%v)", name, err)
		}
		took := time.Since(start)
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		return took
	}
	rssBefore := rssKiB(pid)
	var apis, clis []time.Duration
	for i := 0; i < max(b.N, 3); i++ {
		apis = append(apis, apiFirst("api"+strconv.Itoa(i)))
		clis = append(clis, firstOutput(b, h, runArgs(nil, "cli"+strconv.Itoa(i), ws, "echo ready")...))
	}
	readBoot(b, h)
	b.Logf("API %v; CLI %v", apis, clis)
	report(b, benchResult{
		Name: "API create to first exec output (snapshot start)", Unit: "ms", Value: ms(median(apis)),
		Baseline: "sbx run of a new sandbox to first output", BaseVal: ms(median(clis)), Aim: "<= 1.1x",
	})
	h.mustSbx("rm", "-f", "--all")

	const n = 10
	create := func(prefix string, i int) error {
		_, err := c.Create(ctx, daemon.CreateRequest{Name: fmt.Sprintf("%s%d", prefix, i), Workspace: ws})
		return err
	}
	start := time.Now()
	for i := range n {
		if err := create("seq", i); err != nil {
			b.Fatal(err)
		}
	}
	seq := time.Since(start)
	h.mustSbx("rm", "-f", "--all")
	start = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = create("par", i) })
	}
	wg.Wait()
	par := time.Since(start)
	for i, err := range errs {
		if err != nil {
			b.Fatalf("concurrent create %d: %v", i, err)
		}
	}
	if list, err := c.List(ctx); err != nil || len(list) != n {
		b.Fatalf("after 10 concurrent creates: %d sandboxes, %v", len(list), err)
	}
	report(b, benchResult{
		Name: "10 creates at once through the API (wall time)", Unit: "s", Value: par.Seconds(),
		Baseline: "10 creates one after the other", BaseVal: seq.Seconds(),
	})
	time.Sleep(5 * time.Second)
	report(b, benchResult{
		Name: "sbx daemon memory with 10 idle sandboxes (RSS)", Unit: "MiB", Value: float64(rssKiB(pid)) / 1024,
		Baseline: "with none, after its first requests", BaseVal: float64(rssBefore) / 1024,
	})
}
