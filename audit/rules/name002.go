package rules

import (
	"github.com/qconv/qconv/audit"
)

func name002() *audit.Rule {
	return &audit.Rule{
		ID:       "NAME002",
		Title:    "PEFT .base_layer. in tensor names of a full checkpoint",
		Severity: audit.Error,
		Doc: `Tensor names contain ".base_layer.", which PEFT inserts when it wraps a
layer with a LoRA (or other) adapter: "q_proj.base_layer.weight" instead
of "q_proj.weight". In a full checkpoint these weights do not match the
model's parameter names, so transformers leaves the real ones randomly
initialized.

Fix: merge the adapter before saving (merge_and_unload()), or rename
"X.base_layer.Y" to "X.Y".`,
		Run: func(p *audit.Pass) {
			nameRule(p, func(n string) bool { return hasComponent(n, "base_layer") },
				func(f *audit.File, n int, ex string) {
					p.Reportf(f.Path, ex, "%s PEFT's \".base_layer.\", so they do not match the model's parameters; merge the adapter (merge_and_unload()) before saving, or rename X.base_layer.Y to X.Y",
						agree(n, "tensor name", "contains", "contain"))
				})
		},
	}
}
