package qemu

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sbx-dev/sbx/internal/vm"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestArgsGolden(t *testing.T) {
	base := vm.Config{
		Name:        "demo",
		Kernel:      "/cache/kernel/6.1/vmlinux",
		Initrd:      "/cache/initramfs/abc.cpio",
		Cmdline:     "console=ttyS0 sbx.root=/dev/vda",
		CPUs:        1,
		MemoryMiB:   2048,
		Accel:       vm.AccelTCG,
		TSCkHz:      2445432,
		Disks:       []vm.Disk{{Path: "/state/ab12/disk.qcow2", Format: "qcow2"}, {Path: "/state/ab12/docker.img", Format: "raw", Serial: "sbx-docker"}},
		Shares:      []vm.Share{{Tag: "ws0", Path: "/home/me/proj"}, {Tag: "ws1", Path: "/home/me/docs,v2", ReadOnly: true}},
		AgentSocket: "/run/user/1000/sbx/ab12/agent.sock",
		ConsoleLog:  "/state/ab12/console.log",
		Net:         &vm.Net{Socket: "/run/user/1000/sbx/ab12/net.sock", MAC: "5a:94:ef:e4:0c:ee"},
	}
	restore := base
	restore.Monitor = "/run/user/1000/sbx/ab12/qmp.sock"
	restore.RestoreFrom = "/cache/snapshots/k1/state"
	restore.MemoryFile = "/cache/snapshots/k1/ram"
	restore.ConsoleAppend = true
	kvm := base
	kvm.Accel = vm.AccelKVM
	kvm.CPUs = 2
	kvm.Shares = nil
	kvm.Net = nil
	kvm.Disks = kvm.Disks[:1]
	vfs := base
	vfs.FileServer = "/usr/lib/qemu/virtiofsd"
	vfs.Shares = []vm.Share{{Tag: "ws0", Path: "/home/me/proj", Transport: vm.TransportVirtioFS, Socket: "/run/user/1000/sbx/ab12/fs-ws0.sock"}, {Tag: "ws1", Path: "/home/me/docs,v2", ReadOnly: true}}
	for name, cfg := range map[string]vm.Config{"tcg": base, "kvm": kvm, "restore": restore, "virtiofs": vfs} {
		t.Run(name, func(t *testing.T) {
			got := strings.Join(Args(cfg), "\n") + "\n"
			path := filepath.Join("testdata", name+".argv")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("argv mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewRejectsUnknownAccel(t *testing.T) {
	_, err := New("qemu").New(t.Context(), vm.Config{Accel: "hvf", AgentSocket: "/x"}, nil)
	if err == nil {
		t.Fatal("want error for unknown accelerator")
	}
}

func TestRestoreNeedsMonitor(t *testing.T) {
	inst, err := New("qemu-system-x86_64").New(t.Context(), vm.Config{Accel: vm.AccelTCG, AgentSocket: "/x", RestoreFrom: "/state"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Start(t.Context(), io.Discard); !errors.Is(err, errNoMonitor) {
		t.Fatalf("Start = %v, want errNoMonitor", err)
	}
	// No process was started: Kill and Wait still end.
	inst.Kill()
	select {
	case ex := <-inst.Wait():
		if ex.Err == nil {
			t.Errorf("exit %+v, want the start error", ex)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait blocks after a Start that started nothing")
	}
}

func TestRestoreRefusesMissingMemoryFile(t *testing.T) {
	cfg := vm.Config{Accel: vm.AccelTCG, AgentSocket: "/x", Monitor: "/y", MemoryMiB: 64,
		RestoreFrom: "/state", MemoryFile: filepath.Join(t.TempDir(), "ram")}
	inst, err := New("qemu-system-x86_64").New(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Start(t.Context(), io.Discard); !errors.Is(err, vm.ErrRestore) {
		t.Fatalf("Start = %v, want ErrRestore", err)
	}
	<-inst.Wait()
}
