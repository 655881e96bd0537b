package rules

import (
	"errors"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/checkpoint"
)

func ix001() *audit.Rule {
	return &audit.Rule{
		ID:       "IX001",
		Title:    "index file is not valid",
		Severity: audit.Error,
		Doc: `model.safetensors.index.json cannot be used: it is not valid JSON (a
duplicate key counts: Python would silently keep the last value), it has no
"weight_map" object mapping tensor names to shard file names, a weight_map
value is not a string, or metadata.total_size is not a non-negative integer.
transformers cannot load the checkpoint. The other IX rules cannot run, so
every .safetensors file in the directory is audited as part of the
checkpoint.

Fix: regenerate the index (save_pretrained writes it; it is
{"metadata": {"total_size": N}, "weight_map": {"tensor": "shard file"}}).`,
		Run: func(p *audit.Pass) {
			x := p.Checkpoint.Index
			if x == nil || x.Err == nil {
				return
			}
			var prob *checkpoint.Problem
			if errors.As(x.Err, &prob) {
				if prob.Code == checkpoint.CodeIndexUnsafePath {
					return // IX008
				}
				p.Reportf(x.Path, prob.Tensor, "%s; regenerate the index (save_pretrained writes it)", prob.Msg)
				return
			}
			p.Reportf(x.Path, "", "cannot read the index: %v; check that it is readable, or regenerate it (save_pretrained writes it)", x.Err)
		},
	}
}
