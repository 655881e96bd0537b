package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
)

func bnb006() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB006",
		Title:    "packed byte count does not match the weight shape",
		Severity: audit.Error,
		Doc: `A packed 4-bit weight holds two codes per byte, so its byte length must be
ceil(n/2) where n is the product of the "shape" in its quant state. A
different length means the data and the state belong to different weights
(a merge or rename gone wrong), or the shape was edited. With a float
storage dtype bitsandbytes sizes the buffer as (n+1)/(2*itemsize)
elements, which is short when (n+1)/2 is not a multiple of the item size.

Fix: re-quantize the weight from its original; the two cannot be
reconciled by editing metadata.`,
		Run: func(p *audit.Pass) {
			for _, g := range packedGroups(p.Checkpoint) {
				if g.State == nil {
					continue
				}
				n, ok := numel(g.State.Shape)
				if !ok {
					p.Reportf(g.Packed.File.Path, g.Base, "the quant state's shape %v overflows; re-quantize the weight", g.State.Shape)
					continue
				}
				if want := bnb.PackedBytes(n); g.Packed.Size() != want {
					p.Reportf(g.Packed.File.Path, g.Base, "the packed weight (%s) has %d bytes but its quant state's shape %v needs ceil(%d/2) = %d; re-quantize the weight",
						g.Packed.DTypeShape(), g.Packed.Size(), g.State.Shape, n, want)
				}
			}
		},
	}
}
