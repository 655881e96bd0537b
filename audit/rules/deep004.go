package rules

import (
	"github.com/qconv/qconv/audit"
)

func deep004() *audit.Rule {
	return &audit.Rule{
		ID:       "DEEP004",
		Title:    "zero absmax in a 4-bit weight",
		Severity: audit.Warning,
		Doc: `A block scale (absmax) of a packed 4-bit weight is 0: the block of source
weights was all zeros (bitsandbytes then stores absmax 0 and the block
dequantizes to zeros). A few such blocks can be deliberate (pruning,
padding); many usually mean the weight was not materialized when it was
quantized.
Runs only with --deep.

Fix: if unexpected, re-quantize from the source checkpoint after checking
it with qconv audit --deep.`,
		Deep: true,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			for _, g := range packedGroups(c) {
				var zero, total int64
				first := int64(-1)
				ok, err := absmaxValues(c, g, func(start int64, vals []float64) bool {
					for i, v := range vals {
						if v == 0 {
							if first < 0 {
								first = start + int64(i)
							}
							zero++
						}
					}
					total += int64(len(vals))
					return true
				})
				if !ok || err != nil {
					continue
				}
				if zero > 0 {
					p.Reportf(g.Absmax.File.Path, g.Absmax.Name, "%d of %d blocks have absmax 0 (first: block %d): their source weights were all zero; re-quantize from a materialized source if that is unexpected", zero, total, first)
				}
			}
		},
	}
}
