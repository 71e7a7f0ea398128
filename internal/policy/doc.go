// Package policy decides which network destinations a sandbox may reach.
//
// The model is data in, decision out:
//
//   - A Resource names destinations: a host name (example.com), a one-label
//     wildcard (*.example.com), a any-depth wildcard (**.example.com), all
//     hosts (**), an IP address, a CIDR, or localhost:PORT; every form but
//     CIDR may carry a port.
//   - A Rule allows or denies one Resource, globally or for one sandbox
//     (Scope is the sandbox id). Sandbox rules add to the global ones.
//   - A File is the versioned on-disk form: the rules and the default
//     Preset (allow-all, balanced, deny-all), which decides requests no rule
//     matches. The preset is not a rule: an allow rule opens a hole in
//     deny-all.
//   - Compile turns a File into an immutable Set; Set.Evaluate is a pure
//     function from a Request to a Decision.
//
// Evaluation rules, in order of strength:
//
//  1. A malformed rule set denies everything (fail closed).
//  2. Deny beats allow, whatever the specificity, across host and IP rules.
//  3. Special addresses (loopback, private and shared ranges, link-local
//     including the 169.254.169.254 metadata address, unspecified,
//     multicast, broadcast, and the host's own addresses given to Compile)
//     are never covered by host patterns, ** included, nor by any preset:
//     only a rule naming the IP, a CIDR containing it, or localhost:PORT
//     (for loopback) allows them.
//  4. Otherwise the first matching allow rule allows, and with no matching
//     rule the default preset decides.
//
// The package does no network I/O: host names are matched as names, and a
// caller that resolved a name passes both the name and the address. The
// only I/O is the policy file (Store), and Engine, which holds the current
// Set behind an atomic pointer and reloads it when the file changes.
package policy
