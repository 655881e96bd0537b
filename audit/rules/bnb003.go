package rules

import (
	"strings"

	"github.com/qconv/qconv/audit"
)

func bnb003() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB003",
		Title:    "not exactly one quant state per packed weight",
		Severity: audit.Error,
		Doc: `bitsandbytes (QuantState.from_dict) requires exactly one
"<weight>.quant_state.bitsandbytes__nf4" or "...__fp4" tensor next to each
packed weight. With none, the weight's absmax/quant_map siblings exist
but the weight cannot be dequantized (loading fails); with two or more
(for example both __nf4 and __fp4 after a bad merge), loading fails with
"Expected exactly one quant_state item".

Fix: re-quantize the weight, or delete the stale quant-state tensor so that
one matching the data remains.`,
		Run: func(p *audit.Pass) {
			for _, g := range p.Checkpoint.QuantGroups() {
				if g.Packed == nil {
					continue // BNB012
				}
				switch len(g.States) {
				case 1:
				case 0:
					p.Reportf(g.Packed.File.Path, g.Base, "the weight has quantization statistics (absmax, quant_map) but no quant_state.bitsandbytes__nf4/fp4 tensor, so bitsandbytes cannot load it; re-quantize the weight")
				default:
					var names []string
					for _, s := range g.States {
						names = append(names, s.Name[len(g.Base)+1:])
					}
					p.Reportf(g.Packed.File.Path, g.Base, "the weight has %d quant-state tensors (%s); bitsandbytes needs exactly one: delete the stale ones", len(g.States), strings.Join(names, ", "))
				}
			}
		},
	}
}
