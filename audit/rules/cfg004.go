package rules

import (
	"github.com/qconv/qconv/audit"
)

func cfg004() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG004",
		Title:    "bnb_4bit_quant_type disagrees with the tensors",
		Severity: audit.Error,
		Doc: `quantization_config.bnb_4bit_quant_type ("fp4" when absent) differs from
the quant type of the packed weights (their quant_state key and JSON).
NF4 and FP4 have different code books: a loader that builds its layers
from the config dequantizes with the wrong table.

Fix: set bnb_4bit_quant_type to the tensors' type (given in the message).`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			b := bnbConfig(c)
			if b == nil {
				return
			}
			n, first, got := 0, "", ""
			for _, g := range c.QuantGroups() {
				qt, ok := quantType(g)
				if !ok || qt.String() == b.QuantType {
					continue
				}
				if n == 0 {
					first, got = g.Base, qt.String()
				}
				n++
			}
			if n > 0 {
				p.Reportf(c.Config.Path, first, "bnb_4bit_quant_type is %q but %s quantized as %s; set bnb_4bit_quant_type to %q",
					b.QuantType, weightsAre(n), got, got)
			}
		},
	}
}
