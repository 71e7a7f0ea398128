package logcap

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Found by the fifth outside review: guest root writing the serial port
// without end grew console.log without limit. The log is cut past its
// cap, the newest half kept in console.log.1, while a writer appends.
func TestWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := Truncate(path); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() { Watch(path, 64<<10, 5*time.Millisecond, done); close(stopped) }()
	line := bytes.Repeat([]byte("A"), 1023)
	line = append(line, '\n')
	for i := 0; i < 2000; i++ {
		w.Write(line)
		if i%100 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	w.WriteString("last line\n")
	time.Sleep(50 * time.Millisecond)
	close(done)
	<-stopped
	fi, _ := os.Stat(path)
	if fi.Size() > 64<<10+200<<10 {
		t.Errorf("console.log is %d bytes, over its cap", fi.Size())
	}
	old, err := os.ReadFile(path + ".1")
	if err != nil || len(old) != 32<<10 {
		t.Errorf("console.log.1: %d bytes, %v; want the newest 32 KiB", len(old), err)
	}
	cur, _ := os.ReadFile(path)
	if !strings.HasSuffix(string(cur), "last line\n") && !strings.HasSuffix(string(old), "last line\n") {
		t.Error("the newest line is in neither file")
	}
	if !strings.Contains(string(cur), "[sbx: the log passed") {
		t.Errorf("no note of the cut in console.log: %.200q", cur)
	}
}
