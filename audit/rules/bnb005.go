package rules

import (
	"github.com/qconv/qconv/audit"
)

func bnb005() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB005",
		Title:    "quant-state key and quant type disagree",
		Severity: audit.Error,
		Doc: `The quant-state tensor's name ends in "bitsandbytes__nf4" or
"bitsandbytes__fp4", and the JSON inside has the same "quant_type".
Here the key names an unknown type, or the key and the JSON disagree (for
example a blob saying "fp4" stored under __nf4). NF4 and FP4 use different
code books, so a loader that believes the wrong one dequantizes every
weight of the layer to wrong values.

Fix: rename the tensor to match the quant_type that the data was
quantized with, or re-quantize the weight.`,
		Run: func(p *audit.Pass) {
			for _, g := range packedGroups(p.Checkpoint) {
				if len(g.States) != 1 {
					continue // BNB003
				}
				s := g.States[0]
				kt := g.QuantType()
				if kt != "nf4" && kt != "fp4" {
					p.Reportf(s.File.Path, s.Name, "the quant-state key ends in %q; bitsandbytes only knows bitsandbytes__nf4 and bitsandbytes__fp4: rename it after the blob's quant_type", g.StateKind)
					continue
				}
				if g.State != nil && g.State.QuantType.String() != kt {
					p.Reportf(s.File.Path, s.Name, "the key says %s but the JSON says quant_type %q; the two code books differ, so the weight would dequantize wrongly: rename the key or re-quantize", kt, g.State.QuantType.String())
				}
			}
		},
	}
}
