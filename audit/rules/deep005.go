package rules

import (
	"math"

	"github.com/qconv/qconv/audit"
)

func deep005() *audit.Rule {
	return &audit.Rule{
		ID:       "DEEP005",
		Title:    "weight matrix with all values equal",
		Severity: audit.Warning,
		Doc: `A dense floating-point tensor of rank 2 or more has every element equal to
the same non-zero value (all zeros is DEEP002). A trained weight matrix
is never constant: it was initialized by a placeholder (torch.ones,
torch.full) and never overwritten, which means its real values were not
loaded. Vectors (norm scales are all 1.0 in a fresh model) are not
checked.
Runs only with --deep.

Fix: re-save from a model whose weights were actually loaded.`,
		Deep: true,
		Run: func(p *audit.Pass) {
			for _, t := range denseFloats(p.Checkpoint) {
				if len(t.Shape) < 2 || t.NumElements() < 2 {
					continue
				}
				first, same := math.NaN(), true
				err := scanFloats(t, func(start int64, vals []float64) bool {
					for i, v := range vals {
						if start == 0 && i == 0 {
							first = v
							continue
						}
						if v != first {
							same = false
							return false
						}
					}
					return true
				})
				if err == nil && same && first != 0 && !math.IsNaN(first) {
					p.Reportf(t.File.Path, t.Name, "all %d values equal %g: a placeholder initialization that was never overwritten; re-save from a model whose weights were loaded", t.NumElements(), first)
				}
			}
		},
	}
}
