package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

func bnb007() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB007",
		Title:    "absmax missing or of the wrong count or dtype",
		Severity: audit.Error,
		Doc: `Each packed weight needs "<weight>.absmax", one value per block of
blocksize elements: ceil(n/blocksize) values. Without double quantization
they are F32; with double quantization they are U8 codes into
nested_quant_map. A missing absmax, a different count, or the wrong dtype
means the scales do not belong to this weight, and loading fails or every
block is scaled wrongly.

Fix: re-quantize the weight.`,
		Run: func(p *audit.Pass) {
			for _, g := range packedGroups(p.Checkpoint) {
				if g.State == nil {
					continue
				}
				if g.Absmax == nil {
					p.Reportf(g.Packed.File.Path, g.Base, "the weight has no %s.absmax tensor, so it cannot be dequantized; re-quantize the weight", g.Base)
					continue
				}
				a := g.Absmax
				want := dtype.F32
				if g.State.DoubleQuant {
					want = dtype.U8
				}
				if a.DType != want {
					how := "without double quantization absmax is F32"
					if g.State.DoubleQuant {
						how = "with double quantization (nested_* keys in the quant state) absmax holds U8 codes"
					}
					p.Reportf(a.File.Path, a.Name, "absmax is %s but %s; re-quantize the weight", a.DTypeShape(), how)
				}
				n, ok := numel(g.State.Shape)
				if !ok {
					continue // BNB006
				}
				if nb := bnb.NumBlocks(n, g.State.Blocksize); a.NumElements() != nb {
					p.Reportf(a.File.Path, a.Name, "absmax has %d values but %d elements in blocks of %d need ceil(%d/%d) = %d; re-quantize the weight",
						a.NumElements(), n, g.State.Blocksize, n, g.State.Blocksize, nb)
				}
			}
		},
	}
}
