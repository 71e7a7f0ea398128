package wsdiff

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Kind is the type of a file in a snapshot.
type Kind uint8

// Kinds of file.
const (
	KindFile Kind = iota + 1
	KindDir
	KindSymlink
	KindSpecial // fifo, socket, device
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindDir:
		return "dir"
	case KindSymlink:
		return "symlink"
	case KindSpecial:
		return "special"
	}
	return "unknown"
}

// Entry is one file, folder or link of a tree, as Lstat saw it.
type Entry struct {
	Path  string // slash-separated, relative to the tree's root
	Kind  Kind
	Mode  uint32 // permission bits with setuid, setgid and sticky (07777)
	Size  int64
	MTime int64 // ns since the epoch
	CTime int64 // ns since the epoch
	Dev   uint64
	Ino   uint64
	Nlink uint64
	// Target is a symlink's target, as read with readlink.
	Target string
	// Hash is the sha256 of a flagged (risky) file's content; zero when
	// not hashed.
	Hash [32]byte
	// Hashed reports whether Hash was taken.
	Hashed bool
	// Copied reports whether a copy of the content is kept under the
	// snapshot's files folder, named by the hash.
	Copied bool
	// LinkedOut reports a regular file with more links than the tree
	// holds: the others are outside the workspace.
	LinkedOut bool
}

// HashHex is the content hash in hex, or "" when not hashed.
func (e *Entry) HashHex() string {
	if !e.Hashed {
		return ""
	}
	return hex.EncodeToString(e.Hash[:])
}

// Summary stands for a folder whose content is counted, not listed:
// .git/objects and folders the workspace's .gitignore files ignore.
type Summary struct {
	Dir    string // slash-separated, relative to the root
	Reason string // "git objects" or "ignored"
	Files  int64  // files, links and special files below Dir
	Dirs   int64  // folders below Dir
	Bytes  int64  // sum of the files' sizes
	// Sum is an order-independent fingerprint of every entry's path, size,
	// mtime, ctime, mode and inode: it changes when any of them does.
	Sum uint64
}

// IgnoreFile is the content of one ignore file the walk used: a
// .gitignore (Dir is its folder) or .git/info/exclude (Dir "", Exclude).
type IgnoreFile struct {
	Dir     string
	Exclude bool
	Data    []byte
}

// Tree is the snapshot of one workspace.
type Tree struct {
	Root      string
	Entries   []Entry // sorted by Path
	Summaries []Summary
	Ignore    []IgnoreFile
	// Head is the commit id (hex) the workspace repository's HEAD named
	// when the snapshot was taken, or "": `sbx diff --patch` diffs tracked
	// files against it, not against the HEAD the agent may have moved.
	Head string
	// Unread lists the folders the walk could not list (permissions, too
	// deep, out of file descriptors): what is below them is unknown, and
	// Compare reports each as a risky change.
	Unread []Unread
	// Extra lists folders and files that the workspace's .git/config (as
	// read for this snapshot, or for its base) makes risky: core.hooksPath
	// and include paths inside the workspace, slash-separated.
	Extra []string
	// Tracked lists the ignored folders not summarised because they hold
	// files in the baseline's git index; later walks list them too.
	Tracked []string
}

// Unread is a folder whose content the walk could not read.
type Unread struct {
	Path string
	Why  string
}

func (t *Tree) headID() string {
	if t == nil {
		return ""
	}
	return t.Head
}

// Snapshot is what Take saw of a sandbox's writable workspaces.
type Snapshot struct {
	Taken time.Time
	Trees []*Tree
}

// Tree returns the tree of root, or nil.
func (s *Snapshot) Tree(root string) *Tree {
	if s == nil {
		return nil
	}
	for _, t := range s.Trees {
		if t.Root == root {
			return t
		}
	}
	return nil
}

// Lookup returns the entry at rel, or nil.
func (t *Tree) Lookup(rel string) *Entry {
	i, ok := slices.BinarySearchFunc(t.Entries, rel, func(e Entry, p string) int { return strings.Compare(e.Path, p) })
	if !ok {
		return nil
	}
	return &t.Entries[i]
}

// Options tune Take.
type Options struct {
	// Base, when set, is an earlier snapshot whose ignore rules and
	// summarised folders this one reuses, so the two compare entry by
	// entry even when the agent changed a .gitignore.
	Base *Snapshot
	// FilesDir, when set, receives a copy of each flagged file no larger
	// than MaxCopyBytes, named by its sha256 in hex.
	FilesDir string
	// MaxCopyBytes caps the size of kept copies (default 256 KiB).
	MaxCopyBytes int64
	// MaxHashBytes caps how much of a flagged file is hashed (default
	// 64 MiB); larger files are compared by size and times alone.
	MaxHashBytes int64
	// Baseline marks a snapshot later ones compare with: the workspace's
	// .git/config is read for the paths it makes risky (added to Base's),
	// and HEAD's commit id is recorded.
	Baseline bool
}

// Default caps.
const (
	DefaultMaxCopyBytes = 256 << 10
	DefaultMaxHashBytes = 64 << 20
)

// Take snapshots each root. It never follows symlinks: entries are read
// with fstatat(AT_SYMLINK_NOFOLLOW) relative to their folder, folders are
// opened with O_NOFOLLOW, so a tree changed while it is read cannot lead
// the walk outside it. Unreadable folders are recorded without children;
// so is a root that cannot be opened (gone, not a folder, a symlink, or
// reached through one inside another root): its tree holds only an Unread
// row for ".", which Compare reports as a risky change.
func Take(roots []string, opt Options) (*Snapshot, error) {
	if opt.MaxCopyBytes == 0 {
		opt.MaxCopyBytes = DefaultMaxCopyBytes
	}
	if opt.MaxHashBytes == 0 {
		opt.MaxHashBytes = DefaultMaxHashBytes
	}
	if opt.FilesDir != "" {
		if err := os.MkdirAll(opt.FilesDir, 0o700); err != nil {
			return nil, err
		}
	}
	s := &Snapshot{Taken: time.Now().UTC()}
	clean := make([]string, len(roots))
	for i, root := range roots {
		clean[i] = filepath.Clean(root)
	}
	for _, root := range clean {
		fd, why := openRoot(root, clean)
		if fd < 0 {
			// The guest may have replaced, removed or locked a root (the
			// inner one of nested workspaces): that root is one risky row,
			// the others are still compared.
			s.Trees = append(s.Trees, &Tree{Root: root, Unread: []Unread{{Path: ".", Why: why}}})
			continue
		}
		t, err := takeTree(root, fd, opt)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", root, err)
		}
		if opt.Baseline {
			t.Head = headCommit(t.Root)
		}
		s.Trees = append(s.Trees, t)
	}
	return s, nil
}

// keepCopy writes data as dir/<hash> unless it is there.
func keepCopy(dir string, sum [32]byte, data []byte) bool {
	name := filepath.Join(dir, hex.EncodeToString(sum[:]))
	if _, err := os.Lstat(name); err == nil {
		return true
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return false
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return false
	}
	return true
}

// ReadCopy returns the kept copy of content hash hexSum from dir.
func ReadCopy(dir, hexSum string) ([]byte, error) {
	if _, err := hex.DecodeString(hexSum); err != nil || len(hexSum) != 2*sha256.Size {
		return nil, fs.ErrNotExist
	}
	return os.ReadFile(filepath.Join(dir, hexSum))
}
