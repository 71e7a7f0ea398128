// Package hostcheck answers questions about the host that decide how
// sandboxes run and what `sbx doctor` prints: the TSC frequency to pass to
// TCG guests, where QEMU and qemu-img are, whether KVM really boots a guest
// (probed once with a tiny boot and cached), and free disk space.
package hostcheck
