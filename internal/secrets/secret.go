package secrets

import (
	"fmt"
	"log/slog"
)

// Redacted is what a Secret prints, logs and marshals as.
const Redacted = "[redacted]"

// Secret holds a credential. It prints, logs and marshals as Redacted; only
// Reveal returns the value, for the one place that puts it on the wire.
//
// It is a struct holding a pointer rather than a string type: fmt and
// other reflection-based printers do not call methods on unexported struct
// fields, and would print a string-typed field as is. Through the pointer
// they print an address, never the value. The zero Secret is empty.
type Secret struct {
	v *string
}

// New wraps value in a Secret.
func New(value string) Secret { return Secret{v: &value} }

// Reveal returns the value. Call it only to put the value on the wire or in
// the store.
func (s Secret) Reveal() string {
	if s.v == nil {
		return ""
	}
	return *s.v
}

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.v == nil || *s.v == "" }

// Equal reports whether s and o hold the same value.
func (s Secret) Equal(o Secret) bool { return s.Reveal() == o.Reveal() }

// String implements fmt.Stringer.
func (Secret) String() string { return Redacted }

// GoString implements fmt.GoStringer.
func (Secret) GoString() string { return Redacted }

// Format implements fmt.Formatter for every verb.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalJSON implements json.Marshaler.
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler.
func (Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

var (
	_ fmt.Stringer   = Secret{}
	_ fmt.GoStringer = Secret{}
	_ fmt.Formatter  = Secret{}
	_ slog.LogValuer = Secret{}
)
