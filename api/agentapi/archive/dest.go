package archive

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrDestinationLink means the destination of [Extract], or a folder on
// the way to it, is a symbolic link, which Extract does not follow unless
// [Options.FollowDestLinks] is set.
var ErrDestinationLink = errors.New("symbolic link in the destination")

// linkError is the refusal of a destination whose path passes through the
// symbolic link at link.
type linkError struct {
	dst, link string
	source    bool // on the way to Write's source
}

func (e *linkError) Error() string {
	if e.source {
		return fmt.Sprintf("source %s: %s is a symbolic link; sbx cp does not follow links on the way to what it copies in (one in a workspace may have been made by the sandbox): give the real path", e.dst, e.link)
	}
	if e.dst == e.link {
		return fmt.Sprintf("destination %s is a symbolic link; sbx cp does not follow links in the destination (one in a workspace may have been made by the sandbox): copy to a real folder", e.dst)
	}
	return fmt.Sprintf("destination %s: %s is a symbolic link; sbx cp does not follow links in the destination (one in a workspace may have been made by the sandbox): copy to a real folder", e.dst, e.link)
}

func (e *linkError) Unwrap() error { return ErrDestinationLink }

// openPathFlags opens a folder on the way to the destination: only to
// walk through it, never through a symlink.
const openPathFlags = unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC

// ErrNotFolder means the destination of [Extract] ends in "/", so names
// a folder, but is something else.
var ErrNotFolder = errors.New("not a folder")

// namesFolder reports whether dst, as the user wrote it, names a folder:
// it ends in "/" or "/." (POSIX; docker cp).
func namesFolder(dst string) bool {
	return strings.HasSuffix(dst, "/") || strings.HasSuffix(dst, "/.")
}

// notFolderErr is the refusal of dst, which names a folder (namesFolder)
// but is none: missing, or something else.
func notFolderErr(dst string) error {
	clean := filepath.Clean(dst)
	if _, err := os.Stat(clean); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("the destination folder %s does not exist (a destination ending in / must be an existing folder): create it first, or drop the trailing / to name the copy %s: %w",
			dst, clean, fs.ErrNotExist)
	}
	return fmt.Errorf("destination %s: %w (a destination ending in / must be an existing folder): drop the trailing / to replace %s, or give a folder",
		dst, ErrNotFolder, clean)
}

// destination finds where Extract puts the top-level entry: the folder
// holding it, opened as a root, its name there ("" for the archive's
// own) and whether dst is an existing folder (the entry goes inside it).
// dst is clean.
func destination(dst string, opts Options) (*os.Root, string, bool, error) {
	if opts.FollowDestLinks {
		return destinationFollow(dst, opts)
	}
	parent, last, err := openParent(dst)
	if err != nil {
		return nil, "", false, err
	}
	dir := -1 // dst, when it is an existing folder
	if last == "" {
		// dst is "/", "." or ".." only: a folder, the one just opened.
		dir, parent = parent, -1
	} else {
		var st unix.Stat_t
		err := unix.Fstatat(parent, last, &st, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case errors.Is(err, unix.ENOENT):
		case err != nil:
			err = fmt.Errorf("extract to %s: %w", dst, &fs.PathError{Op: "lstat", Path: dst, Err: err})
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			err = &linkError{dst: dst, link: dst}
		case st.Mode&unix.S_IFMT == unix.S_IFDIR:
			dir, err = openStep(parent, last, dst, dst)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			unix.Close(parent)
			return nil, "", false, err
		}
	}
	var name string
	hold := parent // the folder that will hold the top-level entry
	if dir >= 0 {
		// An existing folder: the top-level entry goes inside it.
		if parent >= 0 {
			unix.Close(parent)
		}
		hold = dir
		name = opts.Name
		if name == ".." || strings.ContainsRune(name, filepath.Separator) {
			unix.Close(hold)
			return nil, "", false, fmt.Errorf("extract to %s: %q is not a valid name", dst, name)
		}
	} else {
		// Not there, or not a folder: the top-level entry becomes dst.
		name = last
	}
	root, err := rootAt(hold)
	unix.Close(hold)
	if err != nil {
		return nil, "", false, fmt.Errorf("extract to %s: %w", dst, err)
	}
	return root, name, dir >= 0, nil
}

// openParent opens, component by component and never through a symlink,
// the folder holding dst's last component, and returns it with that
// component ("" when dst has none: "/", "." or ".." only). A relative dst
// starts at the current folder.
func openParent(dst string) (int, string, error) { return walkParent(dst, false) }

// walkParent is openParent for a destination or, with source, for
// Write's source (messages say which).
func walkParent(dst string, source bool) (int, string, error) {
	verb := "extract to"
	if source {
		verb = "copy"
	}
	start, rest := ".", dst
	if filepath.IsAbs(dst) {
		start, rest = "/", strings.TrimLeft(dst, "/")
	}
	fd, err := unix.Open(start, openPathFlags, 0)
	if err != nil {
		return -1, "", fmt.Errorf("%s %s: %w", verb, dst, &fs.PathError{Op: "open", Path: start, Err: err})
	}
	if rest == "." || rest == "" {
		return fd, "", nil
	}
	comps := strings.Split(rest, "/")
	last := comps[len(comps)-1]
	if last == ".." {
		// Walk into it too: it is always a folder.
		last = ""
	} else {
		comps = comps[:len(comps)-1]
	}
	walked := "" // the path opened so far, for messages
	if start == "/" {
		walked = "/"
	}
	for _, c := range comps {
		walked = filepath.Join(walked, c)
		next, err := openStep(fd, c, walked, dst)
		if le, ok := err.(*linkError); ok {
			le.source = source
		} else if err != nil && source {
			err = errors.New(strings.Replace(err.Error(), "extract to ", "copy ", 1))
		}
		unix.Close(fd)
		if err != nil {
			return -1, "", err
		}
		fd = next
	}
	return fd, last, nil
}

// openStep opens the folder c of the folder open at dirfd without
// following a symlink; p is its path, for messages.
func openStep(dirfd int, c, p, dst string) (int, error) {
	fd, err := unix.Openat(dirfd, c, openPathFlags, 0)
	if err == nil {
		return fd, nil
	}
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		var st unix.Stat_t
		if unix.Fstatat(dirfd, c, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return -1, &linkError{dst: dst, link: p}
		}
		return -1, fmt.Errorf("extract to %s: parent %s is not a directory", dst, p)
	}
	return -1, fmt.Errorf("extract to %s: parent directory: %w", dst, &fs.PathError{Op: "open", Path: p, Err: err})
}

// rootAt opens an [os.Root] at the folder open (O_PATH) at fd, through
// /proc/self/fd, which names that very folder whatever happens to its path.
func rootAt(fd int) (*os.Root, error) {
	r, err := os.OpenRoot("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return nil, fmt.Errorf("open the destination folder through /proc/self/fd (is /proc mounted?): %w", err)
	}
	return r, nil
}

// destinationFollow is destination resolving dst as any path is: for
// [Options.FollowDestLinks].
func destinationFollow(dst string, opts Options) (*os.Root, string, bool, error) {
	var parentDir, name string
	fi, err := os.Stat(dst)
	isDir := err == nil && fi.IsDir()
	switch {
	case isDir:
		parentDir = dst
		if opts.Name != "" {
			name = opts.Name
			if name == ".." || strings.ContainsRune(name, filepath.Separator) {
				return nil, "", false, fmt.Errorf("extract to %s: %q is not a valid name", dst, name)
			}
		}
	case err == nil || errors.Is(err, fs.ErrNotExist):
		parentDir, name = filepath.Dir(dst), filepath.Base(dst)
		if name == "." || name == ".." || name == string(filepath.Separator) {
			return nil, "", false, fmt.Errorf("extract to %s: not a valid destination name", dst)
		}
		pfi, perr := os.Stat(parentDir)
		if perr != nil {
			return nil, "", false, fmt.Errorf("extract to %s: parent directory: %w", dst, perr)
		}
		if !pfi.IsDir() {
			return nil, "", false, fmt.Errorf("extract to %s: parent %s is not a directory", dst, parentDir)
		}
	default:
		return nil, "", false, fmt.Errorf("extract to %s: %w", dst, err)
	}
	parent, err := os.OpenRoot(parentDir)
	if err != nil {
		return nil, "", false, fmt.Errorf("extract to %s: %w", dst, err)
	}
	return parent, name, isDir, nil
}
