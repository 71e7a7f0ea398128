package wsdiff

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// The snapshot file: the magic line, then a gzip stream of the body:
//
//	uvarint version (3; 1 lacks the tree's tail, 2 its tracked folders), varint taken (ns since the epoch), uvarint trees,
//	per tree: string root,
//	  uvarint entries, per entry (sorted by path): uvarint shared prefix with
//	    the previous path, string rest, byte kind, byte flags (1 hashed,
//	    2 copied, 4 linked out), uvarint mode, varint size, varint mtime,
//	    varint ctime, uvarint dev, uvarint ino, uvarint nlink,
//	    string target (symlinks only), 32 bytes hash (hashed only);
//	  uvarint summaries, per summary: string dir, string reason, varint
//	    files, dirs, bytes, 8 bytes sum (little endian);
//	  uvarint ignore files, per file: string dir, byte exclude, string data;
//	  string head commit, uvarint unread, per unread folder: string path,
//	  string why; uvarint extra, per extra risky path: string path;
//	  uvarint tracked, per tracked folder: string path.
//
// Strings are a uvarint length and the bytes.
const (
	magic        = "SBXWSDIFF\n"
	codecVersion = 3
	maxBody      = 1 << 30
)

// ErrFormat is returned for a snapshot file that cannot be read.
var ErrFormat = errors.New("malformed workspace snapshot")

const (
	flagHashed = 1 << iota
	flagCopied
	flagLinkedOut
)

// Encode writes s to w.
func Encode(w io.Writer, s *Snapshot) error {
	if _, err := io.WriteString(w, magic); err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(zw, 64<<10)
	e := enc{w: bw}
	e.uvarint(codecVersion)
	e.varint(s.Taken.UnixNano())
	e.uvarint(uint64(len(s.Trees)))
	for _, t := range s.Trees {
		e.str(t.Root)
		e.uvarint(uint64(len(t.Entries)))
		prev := ""
		for i := range t.Entries {
			en := &t.Entries[i]
			n := commonPrefix(prev, en.Path)
			e.uvarint(uint64(n))
			e.str(en.Path[n:])
			prev = en.Path
			var flags byte
			if en.Hashed {
				flags |= flagHashed
			}
			if en.Copied {
				flags |= flagCopied
			}
			if en.LinkedOut {
				flags |= flagLinkedOut
			}
			e.byte(byte(en.Kind))
			e.byte(flags)
			e.uvarint(uint64(en.Mode))
			e.varint(en.Size)
			e.varint(en.MTime)
			e.varint(en.CTime)
			e.uvarint(en.Dev)
			e.uvarint(en.Ino)
			e.uvarint(en.Nlink)
			if en.Kind == KindSymlink {
				e.str(en.Target)
			}
			if en.Hashed {
				e.bytes(en.Hash[:])
			}
		}
		e.uvarint(uint64(len(t.Summaries)))
		for _, su := range t.Summaries {
			e.str(su.Dir)
			e.str(su.Reason)
			e.varint(su.Files)
			e.varint(su.Dirs)
			e.varint(su.Bytes)
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], su.Sum)
			e.bytes(b[:])
		}
		e.uvarint(uint64(len(t.Ignore)))
		for _, f := range t.Ignore {
			e.str(f.Dir)
			if f.Exclude {
				e.byte(1)
			} else {
				e.byte(0)
			}
			e.str(string(f.Data))
		}
		e.str(t.Head)
		e.uvarint(uint64(len(t.Unread)))
		for _, u := range t.Unread {
			e.str(u.Path)
			e.str(u.Why)
		}
		e.uvarint(uint64(len(t.Extra)))
		for _, x := range t.Extra {
			e.str(x)
		}
		e.uvarint(uint64(len(t.Tracked)))
		for _, x := range t.Tracked {
			e.str(x)
		}
	}
	if e.err != nil {
		return e.err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

type enc struct {
	w   *bufio.Writer
	err error
	tmp [binary.MaxVarintLen64]byte
}

func (e *enc) uvarint(v uint64) { e.bytes(e.tmp[:binary.PutUvarint(e.tmp[:], v)]) }
func (e *enc) varint(v int64)   { e.bytes(e.tmp[:binary.PutVarint(e.tmp[:], v)]) }
func (e *enc) byte(b byte) {
	if e.err == nil {
		e.err = e.w.WriteByte(b)
	}
}
func (e *enc) str(s string) {
	e.uvarint(uint64(len(s)))
	if e.err == nil {
		_, e.err = e.w.WriteString(s)
	}
}
func (e *enc) bytes(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

// Decode reads a snapshot written by Encode. Any malformed input gives an
// error wrapping ErrFormat, never a panic or an allocation larger than the
// input warrants.
func Decode(r io.Reader) (*Snapshot, error) {
	br := bufio.NewReader(r)
	head := make([]byte, len(magic))
	if _, err := io.ReadFull(br, head); err != nil || string(head) != magic {
		return nil, fmt.Errorf("%w: bad magic", ErrFormat)
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	body, err := io.ReadAll(io.LimitReader(zr, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("%w: too large", ErrFormat)
	}
	return decodeBody(body)
}

type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrFormat, what)
	}
	d.b = nil
}

func (d *dec) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) byte() byte {
	if len(d.b) < 1 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *dec) take(n uint64) []byte {
	if n > uint64(len(d.b)) {
		d.fail("truncated")
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *dec) str() string { return string(d.take(d.uvarint())) }

// count reads a count of items each at least min bytes long.
func (d *dec) count(minSize int) int {
	n := d.uvarint()
	if n > uint64(len(d.b)/minSize) {
		d.fail("count past the end")
		return 0
	}
	return int(n)
}

func decodeBody(body []byte) (*Snapshot, error) {
	d := &dec{b: body}
	v := d.uvarint()
	if (v < 1 || v > codecVersion) && d.err == nil {
		return nil, fmt.Errorf("%w: version %d", ErrFormat, v)
	}
	s := &Snapshot{Taken: time.Unix(0, d.varint()).UTC()}
	nt := d.count(3)
	for i := 0; i < nt && d.err == nil; i++ {
		t := &Tree{Root: d.str()}
		ne := d.count(12)
		t.Entries = make([]Entry, 0, ne)
		prev := ""
		for j := 0; j < ne && d.err == nil; j++ {
			n := d.uvarint()
			if n > uint64(len(prev)) {
				d.fail("bad path prefix")
				break
			}
			var en Entry
			en.Path = prev[:n] + d.str()
			if en.Path <= prev && j > 0 {
				d.fail("paths out of order")
				break
			}
			prev = en.Path
			en.Kind = Kind(d.byte())
			if en.Kind < KindFile || en.Kind > KindSpecial {
				d.fail("bad kind")
				break
			}
			flags := d.byte()
			en.Hashed = flags&flagHashed != 0
			en.Copied = flags&flagCopied != 0
			en.LinkedOut = flags&flagLinkedOut != 0
			en.Mode = uint32(d.uvarint() & 0o7777)
			en.Size = d.varint()
			en.MTime = d.varint()
			en.CTime = d.varint()
			en.Dev = d.uvarint()
			en.Ino = d.uvarint()
			en.Nlink = d.uvarint()
			if en.Kind == KindSymlink {
				en.Target = d.str()
			}
			if en.Hashed {
				copy(en.Hash[:], d.take(32))
			}
			t.Entries = append(t.Entries, en)
		}
		ns := d.count(13)
		for j := 0; j < ns && d.err == nil; j++ {
			su := Summary{Dir: d.str(), Reason: d.str(), Files: d.varint(), Dirs: d.varint(), Bytes: d.varint()}
			if b := d.take(8); len(b) == 8 {
				su.Sum = binary.LittleEndian.Uint64(b)
			}
			t.Summaries = append(t.Summaries, su)
		}
		ni := d.count(3)
		for j := 0; j < ni && d.err == nil; j++ {
			f := IgnoreFile{Dir: d.str(), Exclude: d.byte() == 1}
			f.Data = []byte(d.str())
			t.Ignore = append(t.Ignore, f)
		}
		if v >= 2 {
			t.Head = d.str()
			nu := d.count(2)
			for j := 0; j < nu && d.err == nil; j++ {
				t.Unread = append(t.Unread, Unread{Path: d.str(), Why: d.str()})
			}
			nx := d.count(1)
			for j := 0; j < nx && d.err == nil; j++ {
				t.Extra = append(t.Extra, d.str())
			}
		}
		if v >= 3 {
			nk := d.count(1)
			for j := 0; j < nk && d.err == nil; j++ {
				t.Tracked = append(t.Tracked, d.str())
			}
		}
		s.Trees = append(s.Trees, t)
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: trailing bytes", ErrFormat)
	}
	return s, nil
}

// Save writes s to path atomically (a temporary file renamed into place).
func Save(path string, s *Snapshot) error {
	var buf bytes.Buffer
	if err := Encode(&buf, s); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(buf.Bytes())
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o600)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// Load reads the snapshot at path.
func Load(path string) (*Snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}
