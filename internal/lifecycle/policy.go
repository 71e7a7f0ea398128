package lifecycle

import (
	"errors"
	"fmt"
	"time"

	"github.com/sbx-dev/sbx/internal/audit"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// PolicyRule is one network rule as front ends show it: Scope is "global"
// or the id of the sandbox it belongs to (Sandbox its name, empty once
// that sandbox is gone).
type PolicyRule struct {
	ID       string    `json:"id"`
	Action   string    `json:"action"`
	Resource string    `json:"resource"`
	Scope    string    `json:"scope"`
	Sandbox  string    `json:"sandbox,omitempty"`
	Origin   string    `json:"origin"`
	Created  time.Time `json:"created,omitzero"`
}

// PolicyView is the network policy: its default preset, the rules (all,
// or those that apply to one sandbox) and, under balanced, the built-in
// allow list.
type PolicyView struct {
	Default string                `json:"default"`
	Rules   []PolicyRule          `json:"rules"`
	Builtin []policy.BuiltinEntry `json:"builtin,omitempty"`
}

// PolicyStore is the store's policy file.
func (m *Manager) PolicyStore() *policy.Store { return policy.NewStore(m.Dirs.Config) }

// policyErr is a policy file failure: a file that does not parse is
// Invalid (the user fixes it), anything else Internal.
func policyErr(err error) *Error {
	if _, ok := errors.AsType[*policy.FileError](err); ok {
		e := newErr(Invalid, "", err, "fix the file, or start over with `sbx policy reset -f`", "%v", err)
		e.Field = "policy"
		return e
	}
	return newErr(Internal, "", err, "check that the config folder is writable (`sbx diagnose`)", "cannot update the network policy")
}

// EnsurePolicyDefault makes sure a default preset is chosen: when none
// is, choose (nil: balanced, with a warning event) picks one, which is
// written unless another call chose one meanwhile.
func (m *Manager) EnsurePolicyDefault(choose func() (policy.Preset, error)) error {
	f, err := m.PolicyStore().Load()
	if err != nil {
		return policyErr(err)
	}
	if f.Default != policy.PresetUnset {
		return nil
	}
	chosen := policy.PresetBalanced
	if choose != nil {
		if chosen, err = choose(); err != nil {
			return err
		}
	} else {
		m.emit(Event{Kind: Notice, Text: "no network policy chosen yet; using balanced (change it with `sbx policy init allow-all|balanced|deny-all`)"})
	}
	return m.SetPolicyDefault(chosen, true)
}

// SetPolicyDefault writes the default preset; with onlyIfUnset, a default
// chosen meanwhile by another call is kept.
func (m *Manager) SetPolicyDefault(p policy.Preset, onlyIfUnset bool) error {
	err := m.PolicyStore().Update(func(f *policy.File) error {
		if onlyIfUnset && f.Default != policy.PresetUnset {
			return nil
		}
		f.Default = p
		return nil
	})
	if err != nil {
		return policyErr(err)
	}
	return nil
}

// Policy is the network policy; with sb, only the rules that apply to it
// (global ones and its own).
func (m *Manager) Policy(sb *sandbox.Sandbox) (PolicyView, error) {
	f, err := m.PolicyStore().Load()
	if err != nil {
		return PolicyView{}, policyErr(err)
	}
	names := map[string]string{}
	all, _ := m.Store.List()
	for _, s := range all {
		names[s.Config.ID] = s.Config.Name
	}
	v := PolicyView{Default: string(f.Default), Rules: []PolicyRule{}}
	for _, r := range f.Rules {
		if sb != nil && r.Scope != "" && r.Scope != sb.Config.ID {
			continue
		}
		j := PolicyRule{ID: r.ID, Action: string(r.Action), Resource: r.Resource, Scope: "global", Origin: r.Origin, Created: r.Created}
		if r.Scope != "" {
			j.Scope = r.Scope
			j.Sandbox = names[r.Scope]
		}
		v.Rules = append(v.Rules, j)
	}
	if f.Default.Effective() == policy.PresetBalanced {
		v.Builtin = policy.Balanced
	}
	return v, nil
}

// CheckRules refuses rules AddRules would refuse, for a caller that
// checks before it changes anything else.
func CheckRules(action policy.Action, res []policy.Resource) error {
	if action != policy.Allow && action != policy.Deny {
		e := newErr(Invalid, "", nil, "", "a rule's action is allow or deny, not %q", action)
		e.Field = "action"
		return e
	}
	if len(res) == 0 {
		e := newErr(Invalid, "", nil, "name a destination such as example.com", "no resource given")
		e.Field = "resources"
		return e
	}
	return nil
}

// AddRules adds a rule of action for each resource, global or (with sb)
// for that sandbox only; origin says who asked (policy.OriginUser, ...).
// Rules that exist already come back in existing, not added twice. The
// supervisors read the file on each decision: a rule counts at once.
func (m *Manager) AddRules(action policy.Action, res []policy.Resource, sb *sandbox.Sandbox, origin string) (added, existing []policy.Rule, err error) {
	if err := CheckRules(action, res); err != nil {
		return nil, nil, err
	}
	scope := ""
	if sb != nil {
		scope = sb.Config.ID
	}
	now := time.Now()
	err = m.PolicyStore().Update(func(f *policy.File) error {
		// The sandbox may have gone while the call waited for the file.
		if sb != nil {
			if _, err := m.Store.Get(sb.Config.ID); err != nil {
				return newErr(NotFound, sb.Config.Name, err, "list sandboxes with `sbx ls`", "sandbox %s was removed", sb.Config.Name)
			}
		}
		have := map[string]bool{}
		for _, r := range f.Rules {
			have[r.ID] = true
		}
		for _, r := range res {
			rule := policy.NewRule(action, r, scope, origin, now)
			if have[rule.ID] {
				existing = append(existing, rule)
				continue
			}
			have[rule.ID] = true
			f.Rules = append(f.Rules, rule)
			added = append(added, rule)
		}
		return nil
	})
	if err != nil {
		if le, ok := AsError(err); ok {
			return nil, nil, le
		}
		return nil, nil, policyErr(err)
	}
	return added, existing, nil
}

// RemoveRulesRequest picks the rules to remove: by Resource (its allow
// and deny rules, global or, with Sandbox, that sandbox's) or by ID
// (in Sandbox only, when given).
type RemoveRulesRequest struct {
	Resource string
	ID       string
	Sandbox  *sandbox.Sandbox
}

// RemoveRules removes the rules req picks and returns them; none picked
// is NotFound on "rule".
func (m *Manager) RemoveRules(req RemoveRulesRequest) ([]policy.Rule, error) {
	if (req.Resource == "") == (req.ID == "") {
		e := newErr(Invalid, "", nil, "for example: sbx policy rm network --resource example.com", "give exactly one of a resource and a rule id")
		e.Field = "resource"
		return nil, e
	}
	scope := ""
	if req.Sandbox != nil {
		scope = req.Sandbox.Config.ID
	}
	canon := ""
	if req.Resource != "" {
		r, err := policy.ParseResource(req.Resource)
		if err != nil {
			e := newErr(Invalid, "", err, "", "%v", err)
			e.Field = "resource"
			return nil, e
		}
		canon = r.String()
	}
	var removed []policy.Rule
	err := m.PolicyStore().Update(func(f *policy.File) error {
		kept := f.Rules[:0]
		for _, r := range f.Rules {
			match := r.Scope == scope && r.Resource == canon
			if req.ID != "" {
				match = r.ID == req.ID && (req.Sandbox == nil || r.Scope == scope)
			}
			if match {
				removed = append(removed, r)
				continue
			}
			kept = append(kept, r)
		}
		f.Rules = kept
		return nil
	})
	if err != nil {
		return nil, policyErr(err)
	}
	if len(removed) == 0 {
		what := "rule with id " + req.ID
		if req.ID == "" {
			what = "rule for " + canon
			if req.Sandbox != nil {
				what += " in sandbox " + req.Sandbox.Config.Name
			} else {
				what += " (global; sandbox rules need --sandbox)"
			}
		}
		e := newErr(NotFound, "", nil, "list rules with `sbx policy ls`", "no %s", what)
		e.Field = "rule"
		return nil, e
	}
	return removed, nil
}

// PolicyLog is the network decisions of sbs (every sandbox when nil),
// grouped by destination, newest first, at most limit rows (0: all). A
// sandbox whose log cannot be read is left out, with a Warning event.
func (m *Manager) PolicyLog(sbs []*sandbox.Sandbox, limit int) ([]audit.Row, error) {
	var listErr error
	named := sbs != nil
	if sbs == nil {
		sbs, listErr = m.Store.List()
	}
	var events []audit.Event
	for _, sb := range sbs {
		evs, err := audit.ReadFile(sb.Path(supervisor.AuditFile), 0)
		if err != nil && named {
			// The log asked for cannot be read: an empty answer would
			// say the sandbox reached nothing.
			return nil, newErr(Internal, sb.Config.Name, err, "check the file's permissions, or remove it to start a new log", "cannot read the network log of %s (%s): %v", sb.Config.Name, sb.Path(supervisor.AuditFile), err)
		}
		if err != nil {
			m.emit(Event{Kind: Warning, Sandbox: sb.Config.Name, Text: fmt.Sprintf("audit log of %s: %v", sb.Config.Name, err)})
			continue
		}
		for i := range evs {
			if evs[i].Sandbox == "" {
				evs[i].Sandbox = sb.Config.Name
			}
			evs[i].SandboxID = sb.Config.ID
		}
		events = append(events, evs...)
	}
	rows := audit.Summarize(events)
	if limit > 0 && len(rows) > limit {
		rows = rows[:limit]
	}
	if rows == nil {
		rows = []audit.Row{}
	}
	if listErr != nil {
		m.emit(Event{Kind: Warning, Text: fmt.Sprintf("some sandboxes could not be read: %v", listErr)})
	}
	return rows, nil
}
