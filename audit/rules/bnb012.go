package rules

import (
	"github.com/qconv/qconv/audit"
)

func bnb012() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB012",
		Title:    "quantization statistics without a packed weight",
		Severity: audit.Error,
		Doc: `Tensors named "<weight>.absmax", ".quant_map", ".nested_absmax",
".nested_quant_map" or ".quant_state.*" exist, but "<weight>" itself does
not. They are left over from a partial save, a rename of the weight, or a
shard that is missing; transformers reports them as unexpected keys and
the layer they belong to is missing or randomly initialized.

Fix: restore the packed weight (check for a missing shard), or delete the
orphaned tensors.`,
		Run: func(p *audit.Pass) {
			for _, g := range p.Checkpoint.QuantGroups() {
				if g.Packed != nil {
					continue
				}
				ts := g.Tensors()
				p.Reportf(ts[0].File.Path, g.Base, "%d quantization tensor(s) such as %q exist but the packed weight %q does not; restore it (a missing shard?) or delete them", len(ts), ts[0].Name, g.Base)
			}
		},
	}
}
