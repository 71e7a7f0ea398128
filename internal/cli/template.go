package cli

import (
	"context"
	"errors"

	"github.com/sbx-dev/sbx/internal/template"
)

// resolveTemplate returns the template a new sandbox for agent boots from:
// ref when given (a template name), else the agent's built-in template,
// built on first use.
func (e *env) resolveTemplate(ctx context.Context, ref string, agent agentSpec) (template.Template, error) {
	name := ref
	if name == "" {
		name = agent.Template
	}
	if template.IsBuiltin(name) {
		t, err := template.Ensure(ctx, e.dirs.Cache, name, e.stderr)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return t, err
			}
			return t, userErr(err, "see the message above; `sbx diagnose` checks the host", "cannot prepare template %s", name)
		}
		return t, nil
	}
	t, err := template.Lookup(e.dirs.Cache, name)
	if err != nil {
		if errors.Is(err, template.ErrNotFound) {
			return t, userErr(nil, "list templates with `sbx template ls`; load one with `sbx template load FILE`", "no template called %q", name)
		}
		return t, userErr(err, "", "cannot read template %s", name)
	}
	return t, nil
}
