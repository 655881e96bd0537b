package rules

import (
	"math"

	"github.com/qconv/qconv/audit"
)

func deep003() *audit.Rule {
	return &audit.Rule{
		ID:       "DEEP003",
		Title:    "non-finite absmax in a 4-bit weight",
		Severity: audit.Error,
		Doc: `A block scale (absmax) of a packed 4-bit weight is NaN or ±Inf, as stored,
or, with double quantization, as decoded from the nested statistics
(nested_quant_map[code] * nested_absmax + nested_offset). The input
weight held Inf values when it was quantized (bitsandbytes then stores
absmax +Inf and codes that dequantize to NaN), or the statistics are
corrupt; the whole block dequantizes to NaN/Inf.
Runs only with --deep.

Fix: re-quantize from a clean source weight (check it with
qconv audit --deep).`,
		Deep: true,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			for _, g := range packedGroups(c) {
				var bad int64
				first := int64(-1)
				ok, err := absmaxValues(c, g, func(start int64, vals []float64) bool {
					for i, v := range vals {
						if math.IsNaN(v) || math.IsInf(v, 0) {
							if first < 0 {
								first = start + int64(i)
							}
							bad++
						}
					}
					return true
				})
				if !ok || err != nil {
					continue
				}
				if bad > 0 {
					p.Reportf(g.Absmax.File.Path, g.Absmax.Name, "%d block scales are NaN or infinite (first: block %d), so those blocks dequantize to NaN; re-quantize from a clean source weight", bad, first)
				}
			}
		},
	}
}
