package disk

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func qemuImgOrSkip(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		if os.Getenv("SBX_TEST_REQUIRE_VM") != "" {
			t.Fatal("qemu-img is not installed (SBX_TEST_REQUIRE_VM is set)")
		}
		t.Skip("qemu-img is not installed")
	}
	return p
}

// mkimg runs qemu-img create with args, as a user would get the image.
func mkimg(t *testing.T, qemuImg string, args ...string) {
	t.Helper()
	out, err := exec.Command(qemuImg, append([]string{"create", "-q"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create %v: %v: %s", args, err, out)
	}
}

// TestChain: a disk's header names its backing file; Chain follows it only
// into the trusted folders, and refuses every other way a header can make
// QEMU (or qemu-img, run by root) open a file.
func TestChain(t *testing.T) {
	qemuImg := qemuImgOrSkip(t)
	root := t.TempDir()
	cache := filepath.Join(root, "cache")
	tmpls := filepath.Join(cache, "templates")
	snaps := filepath.Join(cache, "snapshots", "k")
	outside := filepath.Join(root, "outside")
	sbdir := filepath.Join(root, "state", "sb")
	for _, d := range []string{tmpls, snaps, outside, sbdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	trusted := []string{filepath.Join(cache, "templates"), filepath.Join(cache, "snapshots")}
	tmpl := filepath.Join(tmpls, "abc.ext4")
	secret := filepath.Join(outside, "shadow")
	for _, f := range []string{tmpl, secret} {
		if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	snap := filepath.Join(snaps, "disk.qcow2")
	mkimg(t, qemuImg, "-f", "qcow2", "-b", tmpl, "-F", "raw", snap, "2M")
	os.Chmod(snap, 0o644)

	overlay := func(t *testing.T, args ...string) string {
		p := filepath.Join(sbdir, t.Name()[len("TestChain/"):]+".qcow2")
		mkimg(t, qemuImg, append(append([]string{"-f", "qcow2"}, args...), p, "2M")...)
		return p
	}
	t.Run("template", func(t *testing.T) {
		got, err := Chain(overlay(t, "-b", tmpl, "-F", "raw"), "qcow2", trusted)
		if err != nil || !slices.Equal(got, []string{tmpl}) {
			t.Fatalf("Chain = %v, %v; want [%s]", got, err, tmpl)
		}
	})
	t.Run("snapshot", func(t *testing.T) {
		got, err := Chain(overlay(t, "-b", snap, "-F", "qcow2"), "qcow2", trusted)
		if err != nil || !slices.Equal(got, []string{snap, tmpl}) {
			t.Fatalf("Chain = %v, %v; want [%s %s]", got, err, snap, tmpl)
		}
	})
	t.Run("none", func(t *testing.T) {
		got, err := Chain(overlay(t), "qcow2", nil)
		if err != nil || len(got) != 0 {
			t.Fatalf("Chain = %v, %v; want none", got, err)
		}
	})
	t.Run("raw", func(t *testing.T) {
		// A raw disk has no header to follow.
		if got, err := Chain(secret, "raw", nil); err != nil || len(got) != 0 {
			t.Fatalf("Chain = %v, %v; want none", got, err)
		}
	})

	link := filepath.Join(tmpls, "link.ext4")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	writable := filepath.Join(tmpls, "writable.ext4")
	os.WriteFile(writable, nil, 0o600)
	os.Chmod(writable, 0o666)
	badSnap := filepath.Join(snaps, "bad.qcow2")
	mkimg(t, qemuImg, "-f", "qcow2", "-u", "-b", secret, "-F", "raw", badSnap, "2M")
	os.Chmod(badSnap, 0o644)
	refused := []struct {
		name    string
		args    []string
		trusted []string
	}{
		{"outside", []string{"-u", "-b", secret, "-F", "raw"}, trusted},
		{"relative", []string{"-u", "-b", "../../outside/shadow", "-F", "raw"}, trusted},
		{"relative-into-trusted", []string{"-u", "-b", "../../cache/templates/abc.ext4", "-F", "raw"}, trusted},
		{"format-lie", []string{"-u", "-b", tmpl, "-F", "qcow2"}, trusted},
		{"format-vmdk", []string{"-u", "-b", tmpl, "-F", "vmdk"}, trusted},
		{"unclean", []string{"-u", "-b", tmpls + "//abc.ext4", "-F", "raw"}, trusted},
		{"dotdot-through-trusted", []string{"-u", "-b", tmpls + "/../../outside/shadow", "-F", "raw"}, trusted},
		{"symlink", []string{"-u", "-b", link, "-F", "raw"}, trusted},
		{"writable", []string{"-u", "-b", writable, "-F", "raw"}, trusted},
		{"nested", []string{"-u", "-b", badSnap, "-F", "qcow2"}, trusted},
		{"json", []string{"-u", "-b", `json:{"driver":"raw","file":{"driver":"file","filename":"` + secret + `"}}`, "-F", "raw"}, trusted},
		{"protocol", []string{"-u", "-b", "nbd+unix:///x?socket=/run/x.sock", "-F", "raw"}, trusted},
		{"file-protocol", []string{"-u", "-b", "file:" + secret, "-F", "raw"}, trusted},
		{"data-file", []string{"-o", "data_file=" + secret + ",data_file_raw=on"}, trusted},
		{"untrusted-everything", []string{"-b", tmpl, "-F", "raw"}, nil},
		{"the-trusted-folder-itself", []string{"-u", "-b", tmpls, "-F", "raw"}, trusted},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			got, err := Chain(overlay(t, c.args...), "qcow2", c.trusted)
			if !errors.Is(err, ErrUntrusted) {
				t.Fatalf("Chain = %v, %v; want ErrUntrusted", got, err)
			}
			t.Log(err)
		})
	}
	if os.Geteuid() == 0 {
		t.Run("foreign-owner", func(t *testing.T) {
			f := filepath.Join(tmpls, "nobody.ext4")
			os.WriteFile(f, nil, 0o644)
			if err := os.Chown(f, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			got, err := Chain(overlay(t, "-u", "-b", f, "-F", "raw"), "qcow2", trusted)
			if !errors.Is(err, ErrUntrusted) {
				t.Fatalf("Chain = %v, %v; want ErrUntrusted", got, err)
			}
		})
	}
}

// FuzzQcow2Backing: any header bytes give a name, none, or an error;
// never a panic or a huge allocation.
func FuzzQcow2Header(f *testing.F) {
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x68\x00\x00\x00\x04"))
	f.Add([]byte("QFI\xfb\x00\x00\x00\x02"))
	f.Add([]byte("not an image"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "img")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		h, err := readQcow2Header(p)
		if err == nil && len(h.backing) > 1023 {
			t.Fatalf("name of %d bytes", len(h.backing))
		}
	})
}

// setBackingName overwrites the backing name in img's header (written as
// placeholder, of the same length) with name: bytes qemu-img would not
// write but an escaped VMM can.
func setBackingName(t *testing.T, img, placeholder, name string) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(placeholder))
	if i < 0 || len(placeholder) != len(name) {
		t.Fatal("placeholder not found")
	}
	copy(b[i:], name)
	if err := os.WriteFile(img, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// convertLeaks reports whether qemu-img, run as root would run it on the
// disk, reads marker from outside the cache.
func convertLeaks(t *testing.T, qemuImg, top, marker string) bool {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	if b, err := exec.Command(qemuImg, "convert", "-q", "-f", "qcow2", "-O", "raw", top, out).CombinedOutput(); err != nil {
		t.Logf("convert: %v %s", err, b)
		return false
	}
	got, _ := os.ReadFile(out)
	return bytes.Contains(got, []byte(marker))
}

// TestChainAsQEMUReadsIt: headers Go and QEMU would read differently (a
// NUL byte ending QEMU's C string, ".." after a symbolic link the guest
// made in its workspace, a backing format that makes QEMU parse a trusted
// file as a VMDK descriptor naming another file) are refused, each shown
// first to make qemu-img read the file outside the cache.
func TestChainAsQEMUReadsIt(t *testing.T) {
	qemuImg := qemuImgOrSkip(t)
	root := t.TempDir()
	tmpls := filepath.Join(root, "cache", "templates")
	sbdir := filepath.Join(root, "state", "sb")
	ws := filepath.Join(root, "ws")
	for _, d := range []string{tmpls, sbdir, filepath.Join(ws, "a", "b"), filepath.Join(ws, "cache", "templates")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const marker = "TOPSECRET-HOST-FILE"
	secret := filepath.Join(root, "shadow")
	os.WriteFile(secret, append([]byte(marker+"\n"), make([]byte, 4096)...), 0o600)
	tmpl := filepath.Join(tmpls, "abc.ext4")
	os.WriteFile(tmpl, make([]byte, 1<<20), 0o644)
	// A trusted raw image whose first bytes the guest wrote: a VMDK
	// descriptor naming the secret.
	desc := "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 8 FLAT \"" + secret + "\" 0\n\nddb.adapterType = \"ide\"\n"
	saved := filepath.Join(tmpls, "saved.ext4")
	os.WriteFile(saved, append([]byte(desc), make([]byte, 1<<20-len(desc))...), 0o644)
	os.Symlink(filepath.Join(ws, "a", "b"), filepath.Join(ws, "S"))
	os.Symlink(secret, filepath.Join(ws, "cache", "templates", "abc.ext4"))

	t.Run("nul", func(t *testing.T) {
		name := "../../shadow\x00/../cache/templates/abc.ext4"
		ph := strings.Repeat("A", len(name))
		top := filepath.Join(sbdir, "nul.qcow2")
		mkimg(t, qemuImg, "-f", "qcow2", "-u", "-b", ph, "-F", "raw", top, "1M")
		setBackingName(t, top, ph, name)
		if !convertLeaks(t, qemuImg, top, marker) {
			t.Fatal("the crafted header no longer makes qemu-img read the host file: the test shows nothing")
		}
		if got, err := Chain(top, "qcow2", []string{tmpls}); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("Chain = %v, %v; want ErrUntrusted", got, err)
		}
	})
	t.Run("dotdot-after-symlink", func(t *testing.T) {
		top := filepath.Join(sbdir, "dotdot.qcow2")
		mkimg(t, qemuImg, "-f", "qcow2", "-u", "-b", "../../ws/S/../../cache/templates/abc.ext4", "-F", "raw", top, "1M")
		if !convertLeaks(t, qemuImg, top, marker) {
			t.Fatal("the crafted header no longer makes qemu-img read the host file: the test shows nothing")
		}
		if got, err := Chain(top, "qcow2", []string{tmpls}); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("Chain = %v, %v; want ErrUntrusted", got, err)
		}
	})
	for _, f := range []string{"vmdk", "probed"} {
		t.Run("format-"+f, func(t *testing.T) {
			top := filepath.Join(sbdir, f+".qcow2")
			args := []string{"-f", "qcow2", "-u", "-b", saved, "-F", "raw"}
			if f == "vmdk" {
				args[len(args)-1] = "vmdk"
			}
			mkimg(t, qemuImg, append(args, top, "1M")...)
			if f == "probed" {
				// Blank the backing format extension: QEMU then probes.
				b, _ := os.ReadFile(top)
				i := bytes.Index(b, []byte{0xe2, 0x79, 0x2a, 0xca})
				if i < 0 {
					t.Fatal("no backing format extension")
				}
				copy(b[i:], []byte{0x12, 0x34, 0x56, 0x78})
				os.WriteFile(top, b, 0o600)
			}
			if !convertLeaks(t, qemuImg, top, marker) {
				t.Fatal("the crafted header no longer makes qemu-img read the host file: the test shows nothing")
			}
			if got, err := Chain(top, "qcow2", []string{tmpls}); !errors.Is(err, ErrUntrusted) {
				t.Fatalf("Chain = %v, %v; want ErrUntrusted", got, err)
			}
		})
	}
}
