package daemon

import (
	"net/http"
	"strconv"

	"github.com/sbx-dev/sbx/internal/lifecycle"
	"github.com/sbx-dev/sbx/internal/policy"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// RulesRequest is the body of POST /v1/policy/rules: rules of Action
// (allow or deny) for each of Resources (as `sbx policy allow network`
// takes them), global or, with Sandbox, for that sandbox only.
type RulesRequest struct {
	Action    string   `json:"action"`
	Resources []string `json:"resources"`
	Sandbox   string   `json:"sandbox,omitempty"`
}

// RulesAnswer is the answer of POST /v1/policy/rules: the rules added,
// and those asked for that existed already.
type RulesAnswer struct {
	Added    []policy.Rule `json:"added"`
	Existing []policy.Rule `json:"existing"`
}

// PresetRequest is the body of PUT /v1/policy/default.
type PresetRequest struct {
	Default string `json:"default"`
}

// optSandbox is the sandbox the "sandbox" query parameter names (nil for
// none); false once a 404 is written.
func (s *Server) optSandbox(w http.ResponseWriter, name string) (*sandbox.Sandbox, bool) {
	if name == "" {
		return nil, true
	}
	sb, err := s.M.Get(name)
	if err != nil {
		s.fail(w, err)
		return nil, false
	}
	return sb, true
}

// getPolicy answers the default preset and the rules (with ?sandbox=,
// those that apply to it).
func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.optSandbox(w, r.URL.Query().Get("sandbox"))
	if !ok {
		return
	}
	v, err := s.M.Policy(sb)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// setDefault chooses the default preset.
func (s *Server) setDefault(w http.ResponseWriter, r *http.Request) {
	var req PresetRequest
	if !readJSON(w, r, &req) {
		return
	}
	p := policy.Preset(req.Default)
	if p != policy.PresetAllowAll && p != policy.PresetBalanced && p != policy.PresetDenyAll {
		writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "default", Message: "default is allow-all, balanced or deny-all"})
		return
	}
	if err := s.M.SetPolicyDefault(p, false); err != nil {
		s.fail(w, err)
		return
	}
	s.getPolicy(w, r)
}

// addRules adds network rules.
func (s *Server) addRules(w http.ResponseWriter, r *http.Request) {
	var req RulesRequest
	if !readJSON(w, r, &req) {
		return
	}
	sb, ok := s.optSandbox(w, req.Sandbox)
	if !ok {
		return
	}
	var res []policy.Resource
	for _, spec := range req.Resources {
		rs, err := policy.ParseResources(spec)
		if err != nil {
			writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "resources", Message: err.Error()})
			return
		}
		res = append(res, rs...)
	}
	// Checked before the default is chosen: a refused request changes
	// nothing.
	if err := lifecycle.CheckRules(policy.Action(req.Action), res); err != nil {
		s.fail(w, err)
		return
	}
	if err := s.M.EnsurePolicyDefault(nil); err != nil {
		s.fail(w, err)
		return
	}
	added, existing, err := s.M.AddRules(policy.Action(req.Action), res, sb, policy.OriginUser)
	if err != nil {
		s.fail(w, err)
		return
	}
	if added == nil {
		added = []policy.Rule{}
	}
	if existing == nil {
		existing = []policy.Rule{}
	}
	writeJSON(w, http.StatusOK, RulesAnswer{Added: added, Existing: existing})
}

// removeRules removes rules by ?resource= (global, or with ?sandbox=
// that sandbox's) or by ?id=, and answers those removed.
func (s *Server) removeRules(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sb, ok := s.optSandbox(w, q.Get("sandbox"))
	if !ok {
		return
	}
	removed, err := s.M.RemoveRules(lifecycle.RemoveRulesRequest{Resource: q.Get("resource"), ID: q.Get("id"), Sandbox: sb})
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, removed)
}

// policyLog answers the network decisions, grouped by destination,
// newest first (?sandbox= one sandbox's, ?limit= at most so many rows,
// 100 unless given; 0 all).
func (s *Server) policyLog(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var sbs []*sandbox.Sandbox
	if name := q.Get("sandbox"); name != "" {
		sb, ok := s.optSandbox(w, name)
		if !ok {
			return
		}
		sbs = []*sandbox.Sandbox{sb}
	}
	limit := 100
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, ErrorMsg{Code: string(lifecycle.Invalid), Field: "limit", Message: "limit is a number, 0 for all"})
			return
		}
		limit = n
	}
	rows, err := s.M.PolicyLog(sbs, limit)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rows)
}
