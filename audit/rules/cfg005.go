package rules

import (
	"github.com/qconv/qconv/audit"
)

func cfg005() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG005",
		Title:    "bnb_4bit_use_double_quant disagrees with the tensors",
		Severity: audit.Warning,
		Doc: `quantization_config.bnb_4bit_use_double_quant (false when absent) differs
from the packed weights: their quant states do (or do not) carry the
nested_* keys and nested tensors of double quantization. bitsandbytes
loads the statistics from the tensors, so transformers usually still
works, but the config misdescribes the checkpoint to every other tool
(memory estimates, re-quantization, converters).

Fix: set bnb_4bit_use_double_quant to match the tensors.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			b := bnbConfig(c)
			if b == nil {
				return
			}
			n, first := 0, ""
			for _, g := range c.QuantGroups() {
				if g.State == nil || g.State.DoubleQuant == b.DoubleQuant {
					continue
				}
				if n == 0 {
					first = g.Base
				}
				n++
			}
			if n > 0 {
				p.Reportf(c.Config.Path, first, "bnb_4bit_use_double_quant is %v but %s %s; set it to %v",
					b.DoubleQuant, weightsAre(n), map[bool]string{true: "double quantized", false: "not double quantized"}[!b.DoubleQuant], !b.DoubleQuant)
			}
		},
	}
}
