package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	Name, Password string
	UID, GID       int
	Gecos, Home    string
	Shell          string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	Name, Password string
	GID            int
	Members        []string
}

// account is a resolved user to run a process as.
type account struct {
	Name   string
	UID    int
	GID    int
	Home   string
	Shell  string
	Groups []uint32 // supplementary groups, including GID
}

func readPasswd(etc string) ([]passwdEntry, error) {
	b, err := os.ReadFile(filepath.Join(etc, "passwd"))
	if err != nil {
		return nil, fmt.Errorf("read passwd: %w", err)
	}
	var out []passwdEntry
	for line := range bytes.Lines(b) {
		f := strings.Split(strings.TrimRight(string(line), "\n"), ":")
		if len(f) != 7 || strings.HasPrefix(f[0], "#") {
			continue
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, passwdEntry{f[0], f[1], uid, gid, f[4], f[5], f[6]})
	}
	return out, nil
}

func readGroup(etc string) ([]groupEntry, error) {
	b, err := os.ReadFile(filepath.Join(etc, "group"))
	if err != nil {
		return nil, fmt.Errorf("read group: %w", err)
	}
	var out []groupEntry
	for line := range bytes.Lines(b) {
		f := strings.Split(strings.TrimRight(string(line), "\n"), ":")
		if len(f) != 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		var members []string
		if f[3] != "" {
			members = strings.Split(f[3], ",")
		}
		out = append(out, groupEntry{f[0], f[1], gid, members})
	}
	return out, nil
}

// lookupAccount resolves a user name or numeric uid against etc/passwd and
// etc/group. A numeric uid absent from passwd runs with gid 0 (as docker
// does), home "/" and shell /bin/sh.
func lookupAccount(etc, spec string) (account, error) {
	users, err := readPasswd(etc)
	if err != nil && !os.IsNotExist(err) {
		return account{}, err
	}
	uid, numErr := strconv.Atoi(spec)
	var pe *passwdEntry
	for i := range users {
		if users[i].Name == spec || (numErr == nil && users[i].UID == uid) {
			pe = &users[i]
			break
		}
	}
	if pe == nil {
		if numErr != nil || uid < 0 {
			return account{}, fmt.Errorf("unable to find user %s: no matching entries in passwd file: %w", spec, os.ErrNotExist)
		}
		return account{Name: spec, UID: uid, GID: 0, Home: "/", Shell: "/bin/sh", Groups: []uint32{0}}, nil
	}
	a := account{Name: pe.Name, UID: pe.UID, GID: pe.GID, Home: pe.Home, Shell: pe.Shell, Groups: []uint32{uint32(pe.GID)}}
	if a.Shell == "" {
		a.Shell = "/bin/sh"
	}
	if a.Home == "" {
		a.Home = "/"
	}
	groups, err := readGroup(etc)
	if err != nil && !os.IsNotExist(err) {
		return account{}, err
	}
	for _, g := range groups {
		if slices.Contains(g.Members, a.Name) && !slices.Contains(a.Groups, uint32(g.GID)) {
			a.Groups = append(a.Groups, uint32(g.GID))
		}
	}
	return a, nil
}

// renumberUser gives user name the uid and gid in etc/passwd, and gives its
// primary group (the group that had the user's old gid, normally named like
// the user) the new gid in etc/group. Files are rewritten atomically; lines
// it does not understand are kept as they are. It returns the old uid and
// gid, and whether anything changed.
func renumberUser(etc, name string, uid, gid int) (oldUID, oldGID int, changed bool, err error) {
	pw := filepath.Join(etc, "passwd")
	b, err := os.ReadFile(pw)
	if err != nil {
		return 0, 0, false, fmt.Errorf("read passwd: %w", err)
	}
	found := false
	var out bytes.Buffer
	for line := range bytes.Lines(b) {
		s := strings.TrimRight(string(line), "\n")
		f := strings.Split(s, ":")
		if len(f) == 7 && f[0] == name && !found {
			found = true
			oldUID, _ = strconv.Atoi(f[2])
			oldGID, _ = strconv.Atoi(f[3])
			f[2], f[3] = strconv.Itoa(uid), strconv.Itoa(gid)
			s = strings.Join(f, ":")
		}
		out.WriteString(s + "\n")
	}
	if !found {
		return 0, 0, false, fmt.Errorf("user %s is not in passwd: %w", name, os.ErrNotExist)
	}
	if oldUID == uid && oldGID == gid {
		return oldUID, oldGID, false, nil
	}
	if err := writeAtomic(pw, out.Bytes()); err != nil {
		return 0, 0, false, err
	}
	if oldGID != gid {
		gr := filepath.Join(etc, "group")
		gb, err := os.ReadFile(gr)
		if err != nil {
			return 0, 0, false, fmt.Errorf("read group: %w", err)
		}
		out.Reset()
		done := false
		for line := range bytes.Lines(gb) {
			s := strings.TrimRight(string(line), "\n")
			f := strings.Split(s, ":")
			if len(f) == 4 && !done && (f[0] == name || f[2] == strconv.Itoa(oldGID)) {
				done = true
				f[2] = strconv.Itoa(gid)
				s = strings.Join(f, ":")
			}
			out.WriteString(s + "\n")
		}
		if err := writeAtomic(gr, out.Bytes()); err != nil {
			return 0, 0, false, err
		}
	}
	return oldUID, oldGID, true, nil
}

func writeAtomic(path string, data []byte) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := path + ".sbx-tmp"
	if err := os.WriteFile(tmp, data, fi.Mode().Perm()); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// chownTree gives every file under dir owned by oldUID (or group oldGID)
// the new uid (gid), without following symlinks.
func chownTree(dir string, oldUID, oldGID, uid, gid int) error {
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fileOwner(fi)
		if !ok {
			return nil
		}
		nu, ng := -1, -1
		if st.uid == oldUID {
			nu = uid
		}
		if st.gid == oldGID {
			ng = gid
		}
		if nu == -1 && ng == -1 {
			return nil
		}
		if err := os.Lchown(p, nu, ng); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
		return nil
	})
}
