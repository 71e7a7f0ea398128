// Package bootassets prepares what a sandbox VM boots from: the guest kernel
// (Debian's generic kernel, downloaded and unpacked into the cache, never
// installed on the host), the set of kernel modules the guest needs, and the
// initramfs that carries the guest agent as /init.
//
// Everything it writes lives under a cache directory, is addressed by
// version or content, is built in a temporary directory and renamed into
// place, and is guarded by a file lock, so two sbx processes never see a
// half-written asset and a crash leaves nothing behind but a temp dir that
// the next run removes.
//
// Cache layout:
//
//	<cacheDir>/kernel/<release>/vmlinux                    uncompressed ELF kernel (PVH bootable)
//	<cacheDir>/kernel/<release>/lib/modules/<release>/...  the kernel's module tree
//	<cacheDir>/kernel/<release>/kernel.json                where it came from
//	<cacheDir>/initramfs/<sha256>.cpio                     newc initramfs, see EnsureInitramfs
package bootassets
