package wsdiff

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// makeTree50k makes a workspace of 50,000 files: 40,000 in 400 source
// folders (each with a package.json, hashed as flagged), 9,000 in an
// ignored node_modules and 1,000 git objects.
func makeTree50k(b *testing.B) string {
	tree50kOnce.Do(func() { tree50k = buildTree50k(b) })
	if tree50k == "" {
		b.Fatal("cannot make the 50k tree")
	}
	return tree50k
}

var (
	tree50kOnce sync.Once
	tree50k     string
)

// TestMain removes the benchmarks' shared tree.
func TestMain(m *testing.M) {
	code := m.Run()
	if tree50k != "" {
		os.RemoveAll(filepath.Dir(tree50k))
	}
	os.Exit(code)
}

func buildTree50k(b *testing.B) string {
	tmp, err := os.MkdirTemp("", "wsdiff-bench-")
	if err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(tmp, "ws")
	data := []byte("0123456789abcdef0123456789abcdef\n")
	mk := func(dir string, n int, name string) {
		os.MkdirAll(filepath.Join(root, dir), 0o755)
		for i := 0; i < n; i++ {
			if err := os.WriteFile(filepath.Join(root, dir, fmt.Sprintf(name, i)), data, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	os.WriteFile(filepath.Join(root, ".gitignore"), []byte("node_modules/\n"), 0o644)
	for d := 0; d < 400; d++ {
		dir := fmt.Sprintf("src/pkg%03d", d)
		mk(dir, 99, "file%03d.go")
		os.WriteFile(filepath.Join(root, dir, "package.json"), []byte(`{"scripts":{}}`), 0o644)
	}
	for d := 0; d < 90; d++ {
		mk(fmt.Sprintf("node_modules/m%02d/lib", d), 100, "f%03d.js")
	}
	for d := 0; d < 100; d++ {
		mk(fmt.Sprintf(".git/objects/%02x", d), 10, "obj%02d")
	}
	return root
}

// BenchmarkSummary50k snapshots a 50,000-file workspace and compares it
// with the snapshot taken at the start (what a run summary costs), against
// a baseline measured in the same run: a bare filepath.WalkDir with an
// Lstat of every entry.
func BenchmarkSummary50k(b *testing.B) {
	root := makeTree50k(b)
	walk := func() int {
		n := 0
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil {
				if _, err := os.Lstat(p); err == nil {
					n++
				}
			}
			return nil
		})
		return n
	}
	if n := walk(); n < 50000 {
		b.Fatalf("tree has %d entries", n)
	}
	base, err := Take([]string{root}, Options{FilesDir: filepath.Join(b.TempDir(), "files")})
	if err != nil {
		b.Fatal(err)
	}
	// The baseline runs alternately with the summary, outside the timer,
	// so both see the same page cache.
	var baseline time.Duration
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		t0 := time.Now()
		walk()
		baseline += time.Since(t0)
		b.StartTimer()
		_, cs, err := Since(base)
		if err != nil || len(cs) != 0 {
			b.Fatal(err, len(cs))
		}
	}
	per := b.Elapsed() / time.Duration(b.N)
	baseline /= time.Duration(b.N)
	b.ReportMetric(float64(per.Milliseconds()), "ms/summary")
	b.ReportMetric(float64(baseline.Milliseconds()), "ms/baseline-walk")
	b.ReportMetric(float64(per)/float64(baseline), "x-baseline")
}

// BenchmarkRecord50k is the start snapshot: walk, hash and copy the
// flagged files, encode and save.
func BenchmarkRecord50k(b *testing.B) {
	root := makeTree50k(b)
	dir := b.TempDir()
	for b.Loop() {
		if _, err := Record(dir, []string{root}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((b.Elapsed() / time.Duration(b.N)).Milliseconds()), "ms/record")
	fi, _ := os.Stat(filepath.Join(dir, StartFile))
	b.ReportMetric(float64(fi.Size()), "snapshot-bytes")
}
