package rules

import (
	"github.com/qconv/qconv/audit"
)

func ix006() *audit.Rule {
	return &audit.Rule{
		ID:       "IX006",
		Title:    "safetensors file not referenced by the index",
		Severity: audit.Warning,
		Doc: `The directory holds a .safetensors file that the index never names. It is
uploaded and downloaded with the checkpoint but never loaded: a leftover
from an earlier save with a different shard count, or a file that should
be in the index. (An adapter_model.safetensors beside a full model is
also flagged: keep adapters in their own directory.)

Fix: delete the file, or regenerate the index if its tensors belong to the
model.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			if usableIndex(c) == nil {
				return
			}
			for _, f := range c.Files {
				if !f.Member {
					p.Reportf(f.Path, "", "the index does not reference this file, so it is never loaded; delete it, or regenerate the index if it belongs to the model")
				}
			}
		},
	}
}
