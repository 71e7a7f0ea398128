// Package secrets keeps the user's API keys and tokens on the host and puts
// them on the wire for a sandbox without the guest ever holding them.
//
// The model (docs/secrets.md):
//
//   - Store keeps secrets, global or scoped to one sandbox id (the sandbox's
//     entry beats the global one). Values live in the Secret Service
//     (Options.Keyring) or, without one, in a 0600 JSON file in a 0700
//     folder; the file is also the index (service, scope, time set) that
//     `sbx secret ls` reads.
//   - Providers is the table of built-in services: their environment
//     variables, hosts and header forms.
//   - The guest sees Sentinel in a service's variables and a random
//     placeholder (PlaceholderPrefix + 32 hex) in a custom secret's
//     variable (GuestEnv).
//   - Injector is the proxy's hook: Intercept makes the proxy terminate TLS
//     to a secret's hosts, ModifyRequest writes the real value there, and
//     only there, and reports a placeholder or value sent anywhere else.
//   - Secret redacts itself in fmt, slog, JSON and text marshalling; only
//     Reveal returns the value. No error or log record of this package
//     carries a value.
//
// This package reads no environment variable: the caller chooses the
// backend.
package secrets
