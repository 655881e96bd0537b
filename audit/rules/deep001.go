package rules

import (
	"math"

	"github.com/qconv/qconv/audit"
)

func deep001() *audit.Rule {
	return &audit.Rule{
		ID:       "DEEP001",
		Title:    "NaN or infinite values",
		Severity: audit.Error,
		Doc: `A dense floating-point tensor holds NaN or ±Inf values. They propagate
through every layer after it: the model outputs NaN. Typical causes are a
diverged training run, float16 overflow when converting from float32 or
bfloat16 (values beyond ±65504 become Inf), or a corrupt file.
Runs only with --deep (reads all dense tensor data).

Fix: go back to a checkpoint before the divergence, or convert to
bfloat16 instead of float16 when values exceed float16's range.`,
		Deep: true,
		Run: func(p *audit.Pass) {
			for _, t := range denseFloats(p.Checkpoint) {
				var nan, inf int64
				first := int64(-1)
				err := scanFloats(t, func(start int64, vals []float64) bool {
					for i, v := range vals {
						switch {
						case math.IsNaN(v):
							nan++
						case math.IsInf(v, 0):
							inf++
						default:
							continue
						}
						if first < 0 {
							first = start + int64(i)
						}
					}
					return true
				})
				if err != nil {
					p.Reportf(t.File.Path, t.Name, "cannot check the values: %v; check that the file is readable and finished downloading", err)
					continue
				}
				if nan+inf > 0 {
					p.Reportf(t.File.Path, t.Name, "%d NaN and %d infinite values (first at element %d), which make the model output NaN; restore the tensor from a good checkpoint (or convert to bfloat16 instead of float16 if it overflowed)", nan, inf, first)
				}
			}
		},
	}
}
