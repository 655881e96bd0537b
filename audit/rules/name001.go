package rules

import (
	"strings"

	"github.com/qconv/qconv/audit"
)

func name001() *audit.Rule {
	return &audit.Rule{
		ID:       "NAME001",
		Title:    "PEFT wrapper prefix base_model.model. in a full checkpoint",
		Severity: audit.Error,
		Doc: `Tensor names start with "base_model.model.", the prefix PEFT's PeftModel
wrapper adds. The checkpoint claims to be a full model (it is not an
adapter: no adapter_config.json, not adapter_model.safetensors), but it was
saved from the wrapper (for example model.state_dict() of a PeftModel, or
a merge that forgot to unwrap). transformers finds none of the expected
names: every weight is reported missing and randomly initialized, and the
model produces garbage.

Fix: merge and unwrap before saving (model = model.merge_and_unload();
model.save_pretrained(...)), or strip the prefix from the names.`,
		Run: func(p *audit.Pass) {
			nameRule(p, func(n string) bool { return strings.HasPrefix(n, "base_model.model.") },
				func(f *audit.File, n int, ex string) {
					p.Reportf(f.Path, ex, "%s PEFT's \"base_model.model.\" prefix, so transformers matches none of them and initializes the model randomly; save with merge_and_unload().save_pretrained(), or strip the prefix",
						agree(n, "tensor name", "carries", "carry"))
				})
		},
	}
}
