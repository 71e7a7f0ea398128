// Package wsdiff tells what changed in a workspace while an agent had it.
//
// Take walks workspace trees on the host and records each entry as Lstat
// sees it (path, kind, size, mode, times, inode, link count, symlink
// target), without following symlinks. Files on the risky paths of the one
// table in rules.go (git hooks and config, CI files, Makefiles,
// package.json, IDE and agent settings, ...) are hashed, and at a VM start
// small copies of them are kept so `sbx diff --patch` can show what changed
// in files git never shows. .git/objects and folders the workspace's
// .gitignore files ignore are summarised (counts and a fingerprint per
// folder), not listed.
//
// Compare turns two snapshots into Changes: added, modified, deleted,
// mode changes and new hard links to files outside the workspace, each
// marked risky with the reason from the table. Snapshots are stored in a
// compact binary form (Encode, Decode) in the sandbox's wsdiff folder
// (Record). docs/workspace-trust.md describes the model and its limits.
package wsdiff
