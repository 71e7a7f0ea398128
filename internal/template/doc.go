// Package template builds and finds the root filesystem images sandboxes
// boot from. A template is an ext4 raw image, immutable once written
// (sandbox disks are qcow2 overlays backed by it), plus a small JSON
// manifest naming it.
//
// Cache layout:
//
//	<cacheDir>/templates/<id>.ext4    the image, id = sha256 of its content, mode 0444
//	<cacheDir>/templates/<name>.json  manifest {version, name, id, created, suite, packages,
//	                                  source, agents, versions, docker, key}
//	<cacheDir>/templates/.lock        serialises builds and removals across processes
//
// The default template "shell" is a minimal Debian (debootstrap minbase of
// the host's own release and mirror) with a user "agent" (uid 1000) that may
// sudo without a password. There is no init system in it: the guest agent
// is PID 1. The built-in "agents" template adds Docker Engine, developer
// tools, Node.js and the agent CLIs pinned by agents/package-lock.json
// (agents.go). Other templates come from images (a docker save tarball, an
// OCI layout or archive, a registry pull) or from a sandbox's disk (save).
package template
