package policy

// BuiltinEntry is one destination the balanced preset allows.
type BuiltinEntry struct {
	Resource string `json:"resource"`
	Category string `json:"category"`
	Note     string `json:"note"`
}

// Categories of the balanced list.
const (
	CategoryAI        = "ai-provider"
	CategoryCodeHost  = "code-host"
	CategoryContainer = "container-registry"
)

// Balanced is the published allow list of the balanced preset: AI provider
// APIs, code hosts and container registries. It never lists package
// registries (npm, PyPI, crates.io, the Go proxy, distribution mirrors):
// users add those. docs/policy.md shows the same table; keep them in step.
var Balanced = []BuiltinEntry{
	// AI providers.
	{"api.anthropic.com", CategoryAI, "Anthropic API"},
	{"console.anthropic.com", CategoryAI, "Anthropic console (API key login)"},
	{"statsig.anthropic.com", CategoryAI, "Claude Code feature flags"},
	{"claude.ai", CategoryAI, "Claude account login"},
	{"api.openai.com", CategoryAI, "OpenAI API"},
	{"auth.openai.com", CategoryAI, "OpenAI login"},
	{"chatgpt.com", CategoryAI, "ChatGPT account (Codex)"},
	{"generativelanguage.googleapis.com", CategoryAI, "Google Gemini API"},
	{"cloudcode-pa.googleapis.com", CategoryAI, "Gemini Code Assist"},
	{"oauth2.googleapis.com", CategoryAI, "Google login tokens"},
	{"api.mistral.ai", CategoryAI, "Mistral API"},
	{"codestral.mistral.ai", CategoryAI, "Mistral Codestral"},
	{"api.groq.com", CategoryAI, "Groq API"},
	{"openrouter.ai", CategoryAI, "OpenRouter API"},
	{"api.x.ai", CategoryAI, "xAI API"},
	// Code hosts.
	{"github.com", CategoryCodeHost, "GitHub (web, git over HTTPS and SSH)"},
	{"api.github.com", CategoryCodeHost, "GitHub API"},
	{"codeload.github.com", CategoryCodeHost, "GitHub archives"},
	{"uploads.github.com", CategoryCodeHost, "GitHub release uploads"},
	{"*.githubusercontent.com", CategoryCodeHost, "GitHub raw files, objects, release assets"},
	{"gitlab.com", CategoryCodeHost, "GitLab"},
	{"bitbucket.org", CategoryCodeHost, "Bitbucket"},
	{"api.bitbucket.org", CategoryCodeHost, "Bitbucket API"},
	// Container registries.
	{"registry-1.docker.io", CategoryContainer, "Docker Hub registry"},
	{"auth.docker.io", CategoryContainer, "Docker Hub tokens"},
	{"production.cloudflare.docker.com", CategoryContainer, "Docker Hub layer CDN"},
	{"index.docker.io", CategoryContainer, "Docker Hub index"},
	{"ghcr.io", CategoryContainer, "GitHub container registry"},
	{"registry.gitlab.com", CategoryContainer, "GitLab container registry"},
	{"quay.io", CategoryContainer, "Quay registry"},
	{"*.quay.io", CategoryContainer, "Quay layer CDN (cdn.quay.io, cdn01.quay.io, ...)"},
	{"gcr.io", CategoryContainer, "Google container registry"},
	{"*.gcr.io", CategoryContainer, "Google container registry (regional)"},
	{"mcr.microsoft.com", CategoryContainer, "Microsoft container registry"},
	{"*.data.mcr.microsoft.com", CategoryContainer, "Microsoft container registry CDN"},
	{"public.ecr.aws", CategoryContainer, "Amazon ECR Public"},
	{"registry.k8s.io", CategoryContainer, "Kubernetes images"},
}

// balancedResources is Balanced parsed once; a bad entry is a programming
// error caught by the tests, and is skipped here rather than panicking.
var balancedResources = func() []builtinResource {
	out := make([]builtinResource, 0, len(Balanced))
	for _, b := range Balanced {
		r, err := ParseResource(b.Resource)
		if err != nil {
			continue
		}
		out = append(out, builtinResource{entry: b, res: r})
	}
	return out
}()

type builtinResource struct {
	entry BuiltinEntry
	res   Resource
}
