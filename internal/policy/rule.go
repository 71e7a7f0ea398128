package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// FileVersion is the version written into policy.json.
const FileVersion = 1

// Action is what a rule does with the requests it matches.
type Action string

// Actions.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// Preset is the default that decides requests no rule matches.
type Preset string

// Presets. PresetUnset means the user has not chosen yet; it evaluates as
// PresetBalanced.
const (
	PresetUnset    Preset = ""
	PresetAllowAll Preset = "allow-all"
	PresetBalanced Preset = "balanced"
	PresetDenyAll  Preset = "deny-all"
)

// Presets lists the presets a user can choose, most open first.
var Presets = []Preset{PresetAllowAll, PresetBalanced, PresetDenyAll}

// ParsePreset checks a preset name.
func ParsePreset(s string) (Preset, error) {
	for _, p := range Presets {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown default %q; choose allow-all, balanced or deny-all", s)
}

// Effective is the preset actually applied: PresetBalanced for PresetUnset.
func (p Preset) Effective() Preset {
	if p == PresetUnset {
		return PresetBalanced
	}
	return p
}

// OriginUser is the origin of rules a person added with `sbx policy`.
const OriginUser = "user"

// Rule allows or denies one resource, globally (Scope "") or for one
// sandbox (Scope is the sandbox id).
type Rule struct {
	ID       string    `json:"id"`
	Action   Action    `json:"action"`
	Resource string    `json:"resource"`
	Scope    string    `json:"scope,omitempty"`
	Origin   string    `json:"origin,omitempty"`
	Created  time.Time `json:"created,omitzero"`
}

// String describes r for people: "deny **.evil.com (id abc12345)".
func (r Rule) String() string {
	return fmt.Sprintf("%s %s (id %s)", r.Action, r.Resource, r.ID)
}

// RuleID is the stable id of a rule: a short hash of its action, canonical
// resource and scope, so adding the same rule twice yields the same id.
func RuleID(action Action, res Resource, scope string) string {
	sum := sha256.Sum256([]byte(string(action) + "\x00" + res.String() + "\x00" + scope))
	return hex.EncodeToString(sum[:4])
}

// NewRule builds a rule with its stable id. An empty origin means
// OriginUser.
func NewRule(action Action, res Resource, scope, origin string, created time.Time) Rule {
	if origin == "" {
		origin = OriginUser
	}
	return Rule{
		ID: RuleID(action, res, scope), Action: action, Resource: res.String(),
		Scope: scope, Origin: origin, Created: created.UTC(),
	}
}

// File is the on-disk policy (policy.json).
type File struct {
	Version int `json:"version"`
	// Default is the preset for requests no rule matches; empty means not
	// chosen yet.
	Default Preset `json:"default"`
	Rules   []Rule `json:"rules"`
}

// applyDefaults fills fields a hand-written file may omit.
func (f *File) applyDefaults() {
	if f.Version == 0 {
		f.Version = FileVersion
	}
	if f.Rules == nil {
		f.Rules = []Rule{}
	}
	for i := range f.Rules {
		if f.Rules[i].Origin == "" {
			f.Rules[i].Origin = OriginUser
		}
	}
}

// Validate reports every problem in f at once, each naming the field and
// the value it holds.
func (f *File) Validate() error {
	_, err := compileRules(f)
	return err
}

// compileRules validates f and parses its rules.
func compileRules(f *File) ([]compiledRule, error) {
	var errs []error
	if f.Version != FileVersion {
		errs = append(errs, fmt.Errorf("version %d is not supported (want %d)", f.Version, FileVersion))
	}
	if f.Default != PresetUnset {
		if _, err := ParsePreset(string(f.Default)); err != nil {
			errs = append(errs, fmt.Errorf("default: %w", err))
		}
	}
	ids := map[string]bool{}
	out := make([]compiledRule, 0, len(f.Rules))
	for i, r := range f.Rules {
		where := fmt.Sprintf("rules[%d]", i)
		if r.ID == "" {
			errs = append(errs, fmt.Errorf("%s.id is empty", where))
		} else if ids[r.ID] {
			errs = append(errs, fmt.Errorf("%s.id %q is used twice", where, r.ID))
		}
		ids[r.ID] = true
		if r.Action != Allow && r.Action != Deny {
			errs = append(errs, fmt.Errorf("%s.action %q is not allow or deny", where, r.Action))
		}
		res, err := ParseResource(r.Resource)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.%w", where, err))
			continue
		}
		out = append(out, compiledRule{rule: r, res: res})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
