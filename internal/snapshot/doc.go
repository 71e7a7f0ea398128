// Package snapshot keeps pre-booted VMs: for a template and a VM shape, a
// guest booted to the point where its agent waits for the host, saved with
// QEMU's migration (memory, CPU and device state) beside the disk as it was
// at that moment. A new sandbox's disk is a qcow2 overlay of that disk, and
// its first start resumes the saved state (vm.Config.RestoreFrom) instead
// of booting a kernel; the setup that follows gives the guest its own
// identity (clock, random pool, machine id, MAC address, hostname) and
// mounts its workspaces, which the snapshot VM never mounted (QEMU refuses
// to save a VM with a 9p share mounted, and the share's host folder may
// differ on restore).
//
// Restore needs the same devices as the save, so every VM made with
// VMConfig has the same fixed set of device slots: root disk, Docker disk
// (when the template has Docker), Shares workspace shares (unused ones
// export an empty read-only folder), network card, agent port, RNG.
//
// Layout, shared by every SBX_HOME using the cache:
//
//	<cache>/snapshots/<key>/meta.json   what the snapshot was made from
//	<cache>/snapshots/<key>/disk.qcow2  the root disk at save time (0400)
//	<cache>/snapshots/<key>/ram         guest memory at save time (sparse)
//	<cache>/snapshots/<key>/state       the saved CPU and device state (0400)
//	<cache>/snapshots/<key>/empty/      the folder unused share slots export
//	<cache>/snapshots/<key>/console.log the snapshot VM's boot
//	<cache>/snapshots/<key>.failed      why a build failed (not retried)
//	<cache>/snapshots/build.log         the snapshot supervisors' log
//	<cache>/snapshots/.leases/<key>/    one file per sandbox disk backed by it,
//	                                    and pending-* leases of creates under way
//
// The key covers everything the saved state depends on (Spec): kernel,
// initramfs (which holds the agent build), template image, QEMU binary
// and version, VM size, disk sizes, accelerator, TSC frequency, the
// command line, the slot layout, and under KVM the host CPU and kernel. The proxy CA is not in it: the guest
// receives it in the setup after restore.
package snapshot
