package rules

import (
	"github.com/qconv/qconv/audit"
)

func ix009() *audit.Rule {
	return &audit.Rule{
		ID:       "IX009",
		Title:    "both model.safetensors and an index",
		Severity: audit.Warning,
		Doc: `The directory holds both model.safetensors and model.safetensors.index.json.
transformers loads model.safetensors and ignores the index and its shards;
other loaders may do the opposite, so tools can disagree about the
weights. The audit follows transformers and checks only model.safetensors.

Fix: delete whichever layout is stale (the shards and index, or
model.safetensors).`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			if c.BothLayouts {
				p.Reportf(c.Index.Path, "", "the directory also holds model.safetensors, which transformers loads instead of the index's shards; delete the stale layout")
			}
		},
	}
}
