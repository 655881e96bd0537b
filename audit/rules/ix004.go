package rules

import (
	"github.com/qconv/qconv/audit"
)

func ix004() *audit.Rule {
	return &audit.Rule{
		ID:       "IX004",
		Title:    "shard holds a tensor the index does not list",
		Severity: audit.Error,
		Doc: `A shard referenced by the index holds a tensor that the index's weight_map
does not list. Loaders that go by the index (transformers computes the
expected and missing keys from it) never load the tensor, or report it as
unexpected; others load it. Either the index is stale or the tensor is
left over. It is an error, as it is for qconv inspect, convert and verify,
which refuse such an index (formats/checkpoint.Open).

Fix: regenerate the index from the shards (if the tensor belongs to the
model), or re-save the shard without it.`,
		Run: func(p *audit.Pass) {
			x := usableIndex(p.Checkpoint)
			if x == nil {
				return
			}
			listed := map[string]bool{}
			for _, e := range x.WeightMap {
				listed[e.Tensor] = true
			}
			for _, f := range p.Checkpoint.MemberFiles() {
				if f.Reader == nil {
					continue
				}
				for _, t := range f.Reader.Tensors() {
					if !listed[t.Name] {
						p.Reportf(f.Path, t.Name, "the shard holds the tensor but the index does not list it, so index-based loaders skip it; regenerate the index, or remove the tensor")
					}
				}
			}
		},
	}
}
