package archive

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestExtractSparse: a tar sparse entry (a few bytes of archive the
// reader expands into gigabytes of zeros) takes on the host the space of
// its data, with its size and data intact; a truncated entry is an error.
func TestExtractSparse(t *testing.T) {
	const size = 2 << 30
	// GNU tar's PAX sparse format, as a guest's tar writes it for a
	// file with one data region in 2 GiB of holes.
	src := t.TempDir()
	f0, err := os.Create(filepath.Join(src, "big"))
	if err != nil {
		t.Fatal(err)
	}
	f0.WriteAt([]byte("hello"), 1<<20)
	f0.Truncate(size)
	f0.Close()
	out, err := exec.Command("tar", "-C", src, "--format=pax", "--sparse", "--sparse-version=1.0", "-cf", "-", "big").Output()
	if err != nil {
		t.Fatalf("tar: %v", err)
	}
	buf := bytes.NewBuffer(out)
	if buf.Len() > 16<<10 {
		t.Fatalf("archive of %d bytes", buf.Len())
	}
	dst := t.TempDir()
	if err := Extract(bytes.NewReader(buf.Bytes()), dst, Options{Name: "big"}); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	p := filepath.Join(dst, "big")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Fatalf("size %d, want %d", fi.Size(), size)
	}
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
		t.Errorf("a %d-byte archive took %d bytes of the host's disk", buf.Len(), used)
	}
	f, _ := os.Open(p)
	defer f.Close()
	got := make([]byte, 5)
	f.ReadAt(got, 1<<20)
	if string(got) != "hello" {
		t.Errorf("data at 1 MiB: %q", got)
	}

	// The same file's data cut short: an error, not a short file.
	var cut bytes.Buffer
	tw := tar.NewWriter(&cut)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "x", Mode: 0o644, Size: 1 << 20})
	tw.Write(bytes.Repeat([]byte{1}, 1000))
	err = Extract(io.LimitReader(bytes.NewReader(cut.Bytes()), int64(cut.Len())), t.TempDir(), Options{Name: "x"})
	if err == nil {
		t.Error("a truncated entry extracted without an error")
	}
}
