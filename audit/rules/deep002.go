package rules

import (
	"github.com/qconv/qconv/audit"
)

func deep002() *audit.Rule {
	return &audit.Rule{
		ID:       "DEEP002",
		Title:    "all-zero tensor",
		Severity: audit.Warning,
		Doc: `A dense floating-point tensor (other than a bias, which may legitimately be
zero) is entirely zeros. A zero weight matrix or norm scale disconnects
its layer; it usually means the tensor was never loaded or saved (for
example a meta-device or ZeRO-3 partitioned parameter saved without
gathering, or a failed conversion).
Runs only with --deep.

Fix: re-save from a model whose parameters are fully materialized
(gather ZeRO-3/FSDP shards before saving).`,
		Deep: true,
		Run: func(p *audit.Pass) {
			for _, t := range denseFloats(p.Checkpoint) {
				if isBias(t.Name) || t.NumElements() == 0 {
					continue
				}
				zero := true
				err := scanFloats(t, func(_ int64, vals []float64) bool {
					for _, v := range vals {
						if v != 0 {
							zero = false
							return false
						}
					}
					return true
				})
				if err == nil && zero {
					p.Reportf(t.File.Path, t.Name, "all %d values are zero, which disconnects the layer; re-save from a model whose parameters were gathered/materialized", t.NumElements())
				}
			}
		},
	}
}
