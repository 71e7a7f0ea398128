package secrets

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Sentinel is the value the guest sees in a built-in service's environment
// variables: enough for agent CLIs to start and send an auth header, which
// the proxy then overwrites.
const Sentinel = "proxy-managed"

// Scheme is how a credential is written in its header.
type Scheme int

const (
	// SchemeRaw writes the value as is (x-api-key: VALUE).
	SchemeRaw Scheme = iota
	// SchemeBearer writes "Bearer VALUE".
	SchemeBearer
	// SchemeBasicToken writes "Basic base64(x-access-token:VALUE)", the form
	// git over HTTPS uses with a GitHub token.
	SchemeBasicToken
)

// Add says when the header is added to a request that carries none. A
// header the client sent (or any of Rule.Clear) is always overwritten.
type Add int

const (
	// AddAlways adds the header to every request to the rule's hosts.
	AddAlways Add = iota
	// AddIfPresent only overwrites: a request without the header (or one of
	// Rule.Clear) goes out without credentials.
	AddIfPresent
	// AddGitPaths adds the header to git smart-HTTP and LFS requests (paths
	// ending in /info/refs, /git-upload-pack, /git-receive-pack, or
	// containing /info/lfs/) and only overwrites elsewhere. git sends no
	// credentials until it gets a 401, and then asks a credential helper
	// the guest does not have.
	AddGitPaths
)

// Rule is how a service's credential is written for some of its hosts.
type Rule struct {
	// Hosts are exact host names (no port; matching ignores the port).
	Hosts []string
	// Header is the header that carries the credential.
	Header string
	Scheme Scheme
	Add    Add
	// Clear are other auth headers removed when Header is written (so a
	// sentinel in a competing header never goes upstream). Their presence
	// also counts as "the client sent credentials" for AddIfPresent.
	Clear []string
	// QueryParam, when set, is a query parameter some clients carry the key
	// in instead (Gemini's ?key=); it is removed, and counts as present.
	QueryParam string
}

// Provider is a built-in service.
type Provider struct {
	// Name is what `sbx secret set NAME` takes.
	Name string
	// Env are the variables the guest sees set to Sentinel, and those `sbx
	// secret import` reads on the host (first non-empty wins).
	Env []string
	// Rules say where and how the credential goes.
	Rules []Rule
	// OAuthPrefix, when a value starts with it, selects OAuthRules and
	// OAuthEnv instead of Rules and Env.
	OAuthPrefix string
	OAuthRules  []Rule
	OAuthEnv    []string
}

// Providers is the table of built-in services (documented in
// docs/secrets.md; keep the two in step).
var Providers = []Provider{
	{
		Name: "anthropic",
		Env:  []string{"ANTHROPIC_API_KEY"},
		Rules: []Rule{{
			Hosts: []string{"api.anthropic.com"}, Header: "X-Api-Key", Scheme: SchemeRaw, Add: AddAlways,
			Clear: []string{"Authorization"},
		}},
		OAuthPrefix: "sk-ant-oat",
		OAuthEnv:    []string{"CLAUDE_CODE_OAUTH_TOKEN"},
		OAuthRules: []Rule{{
			Hosts: []string{"api.anthropic.com"}, Header: "Authorization", Scheme: SchemeBearer, Add: AddAlways,
			Clear: []string{"X-Api-Key"},
		}},
	},
	{
		Name:  "openai",
		Env:   []string{"OPENAI_API_KEY"},
		Rules: []Rule{{Hosts: []string{"api.openai.com"}, Header: "Authorization", Scheme: SchemeBearer, Add: AddAlways}},
	},
	{
		Name: "github",
		Env:  []string{"GH_TOKEN", "GITHUB_TOKEN"},
		Rules: []Rule{
			{Hosts: []string{"api.github.com", "uploads.github.com"}, Header: "Authorization", Scheme: SchemeBearer, Add: AddAlways},
			{Hosts: []string{"github.com", "gist.github.com"}, Header: "Authorization", Scheme: SchemeBasicToken, Add: AddGitPaths},
			{Hosts: []string{"raw.githubusercontent.com"}, Header: "Authorization", Scheme: SchemeBearer, Add: AddIfPresent},
		},
	},
	{
		Name: "google",
		Env:  []string{"GEMINI_API_KEY", "GOOGLE_API_KEY"},
		Rules: []Rule{{
			Hosts: []string{"generativelanguage.googleapis.com"}, Header: "X-Goog-Api-Key", Scheme: SchemeRaw, Add: AddAlways,
			QueryParam: "key",
		}},
	},
	{
		Name:  "groq",
		Env:   []string{"GROQ_API_KEY"},
		Rules: []Rule{{Hosts: []string{"api.groq.com"}, Header: "Authorization", Scheme: SchemeBearer, Add: AddAlways}},
	},
	{
		Name:  "mistral",
		Env:   []string{"MISTRAL_API_KEY"},
		Rules: []Rule{{Hosts: []string{"api.mistral.ai"}, Header: "Authorization", Scheme: SchemeBearer, Add: AddAlways}},
	},
	{
		Name:  "openrouter",
		Env:   []string{"OPENROUTER_API_KEY"},
		Rules: []Rule{{Hosts: []string{"openrouter.ai"}, Header: "Authorization", Scheme: SchemeBearer, Add: AddIfPresent}},
	},
	{
		Name:  "xai",
		Env:   []string{"XAI_API_KEY"},
		Rules: []Rule{{Hosts: []string{"api.x.ai"}, Header: "Authorization", Scheme: SchemeBearer, Add: AddAlways}},
	},
}

// LookupProvider returns the built-in service called name.
func LookupProvider(name string) (Provider, bool) {
	for _, p := range Providers {
		if p.Name == name {
			return p, true
		}
	}
	return Provider{}, false
}

// ProviderNames lists the built-in services in table order.
func ProviderNames() []string {
	names := make([]string, len(Providers))
	for i, p := range Providers {
		names[i] = p.Name
	}
	return names
}

// isOAuth reports whether value selects the provider's OAuth variant.
func (p Provider) isOAuth(value string) bool {
	return p.OAuthPrefix != "" && strings.HasPrefix(value, p.OAuthPrefix)
}

// rulesFor returns the rules that apply to value.
func (p Provider) rulesFor(value string) []Rule {
	if p.isOAuth(value) {
		return p.OAuthRules
	}
	return p.Rules
}

// GuestEnvFor returns the variables the guest sees for a secret value of
// this service.
func (p Provider) GuestEnvFor(value string) []string {
	if p.isOAuth(value) {
		return p.OAuthEnv
	}
	return p.Env
}

// Hosts lists every host any variant of p writes a credential for.
func (p Provider) Hosts() []string {
	var hs []string
	for _, r := range append(slices.Clone(p.Rules), p.OAuthRules...) {
		for _, h := range r.Hosts {
			if !slices.Contains(hs, h) {
				hs = append(hs, h)
			}
		}
	}
	return hs
}

// ruleFor returns the rule of value's variant covering host.
func (p Provider) ruleFor(host, value string) (Rule, bool) {
	for _, r := range p.rulesFor(value) {
		if slices.Contains(r.Hosts, host) {
			return r, true
		}
	}
	return Rule{}, false
}

// headerValue renders value in the rule's scheme.
func (r Rule) headerValue(value string) string {
	switch r.Scheme {
	case SchemeBearer:
		return "Bearer " + value
	case SchemeBasicToken:
		return "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+value))
	default:
		return value
	}
}

// isGitPath reports whether path is a git smart-HTTP or LFS request.
func isGitPath(path string) bool {
	return strings.HasSuffix(path, "/info/refs") ||
		strings.HasSuffix(path, "/git-upload-pack") ||
		strings.HasSuffix(path, "/git-receive-pack") ||
		strings.Contains(path, "/info/lfs/")
}

// apply writes value into req following the rule. It reports whether it
// wrote anything.
func (r Rule) apply(req *http.Request, value string) bool {
	h := req.Header
	present := h.Get(r.Header) != ""
	for _, c := range r.Clear {
		present = present || h.Get(c) != ""
	}
	var q url.Values
	if r.QueryParam != "" && req.URL.RawQuery != "" {
		q = req.URL.Query()
		present = present || q.Has(r.QueryParam)
	}
	add := false
	switch r.Add {
	case AddAlways:
		add = true
	case AddGitPaths:
		add = isGitPath(req.URL.Path)
	}
	if !present && !add {
		return false
	}
	for _, c := range r.Clear {
		h.Del(c)
	}
	if q.Has(r.QueryParam) {
		q.Del(r.QueryParam)
		req.URL.RawQuery = q.Encode()
	}
	h.Set(r.Header, r.headerValue(value))
	return true
}
