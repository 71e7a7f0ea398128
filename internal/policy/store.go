package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sbx-dev/sbx/internal/safefile"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// FileName is the policy file's name in the configuration folder.
const FileName = "policy.json"

const lockName = ".policy.lock"

// FileError is a policy file that cannot be used: its path, the 1-based
// line (0 when unknown) and what is wrong.
type FileError struct {
	Path string
	Line int
	Err  error
}

func (e *FileError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("policy file %s line %d: %v", e.Path, e.Line, e.Err)
	}
	return fmt.Sprintf("policy file %s: %v", e.Path, e.Err)
}

func (e *FileError) Unwrap() error { return e.Err }

// Store reads and writes the policy file. Reads need no lock (writes are
// atomic renames); Update serialises writers with a lock file beside it.
type Store struct {
	dir string
}

// NewStore returns the store for the policy file in configDir. It touches
// nothing on disk.
func NewStore(configDir string) *Store { return &Store{dir: configDir} }

// Path is the policy file's path.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// Load reads the file: parse, then defaults, then validate. A missing file
// is an empty policy with no default chosen. A file that cannot be parsed
// or fails validation returns a *FileError (with the line for syntax and
// type errors) and the zero File.
func (s *Store) Load() (File, error) {
	data, err := os.ReadFile(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		f := File{}
		f.applyDefaults()
		return f, nil
	}
	if err != nil {
		return File{}, fmt.Errorf("read policy: %w", err)
	}
	return Parse(s.Path(), data)
}

// Parse decodes policy file content; path is used in errors only.
func Parse(path string, data []byte) (File, error) {
	var f File
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		fe := &FileError{Path: path, Err: err}
		if se, ok := errors.AsType[*json.SyntaxError](err); ok {
			fe.Line = lineAt(data, se.Offset)
		} else if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
			fe.Line = lineAt(data, te.Offset)
		} else if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			fe.Err = errors.New("file is empty or truncated")
			fe.Line = lineAt(data, int64(len(data)))
		}
		return File{}, fe
	}
	if dec.More() {
		return File{}, &FileError{Path: path, Line: lineAt(data, dec.InputOffset()), Err: errors.New("extra data after the policy object")}
	}
	f.applyDefaults()
	if err := f.Validate(); err != nil {
		return File{}, &FileError{Path: path, Err: err}
	}
	return f, nil
}

// lineAt is the 1-based line of byte offset off in data.
func lineAt(data []byte, off int64) int {
	off = min(max(off, 0), int64(len(data)))
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// Update changes the file under the writers' lock: it loads the current
// file, calls fn, validates the result and writes it atomically (temp file
// and rename, mode 0600). If fn returns an error nothing is written and
// that error comes back. A malformed existing file is an error (fix or
// Reset it); the configuration folder is created (0700) if missing.
func (s *Store) Update(fn func(*File) error) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	f, err := s.Load()
	if err != nil {
		return err
	}
	if err := fn(&f); err != nil {
		return err
	}
	return s.writeLocked(f)
}

// Reset replaces the file with an empty policy and no default chosen,
// whatever the current content (even malformed).
func (s *Store) Reset() error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	f := File{}
	f.applyDefaults()
	return s.writeLocked(f)
}

// RemoveSandbox drops the rules scoped to sandbox id and returns how many
// it removed. A missing policy file removes nothing.
func (s *Store) RemoveSandbox(id string) (int, error) {
	if id == "" {
		return 0, nil
	}
	if _, err := os.Stat(s.Path()); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	n := 0
	err := s.Update(func(f *File) error {
		kept := f.Rules[:0]
		for _, r := range f.Rules {
			if r.Scope == id {
				n++
				continue
			}
			kept = append(kept, r)
		}
		f.Rules = kept
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("remove rules of sandbox %s: %w", id, err)
	}
	return n, nil
}

// Preconditions: s.lock is held.
func (s *Store) writeLocked(f File) error {
	f.applyDefaults()
	if err := f.Validate(); err != nil {
		return fmt.Errorf("refusing to write an invalid policy: %w", err)
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode policy: %w", err)
	}
	data = append(data, '\n')
	return safefile.Write(s.Path(), data, 0o600)
}

func (s *Store) lock() (func(), error) {
	return safefile.Lock(context.Background(), filepath.Join(s.dir, lockName))
}
