package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

func bnb009() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB009",
		Title:    "double-quantization tensors missing or inconsistent",
		Severity: audit.Error,
		Doc: `With double quantization (nested_* keys in the quant state) a packed weight
needs "<weight>.nested_absmax", F32 with ceil(nblocks/256) values, and
"<weight>.nested_quant_map", F32 [256] (the dynamic 8-bit map), where
nblocks is the absmax count. Without double quantization neither may be
present. Missing or mis-sized tensors make loading fail; stray ones mean
the statistics belong to a different quantization of the weight.

Fix: re-quantize the weight.`,
		Run: func(p *audit.Pass) {
			for _, g := range packedGroups(p.Checkpoint) {
				if g.State == nil {
					continue
				}
				if !g.State.DoubleQuant {
					for _, t := range []*audit.Tensor{g.NestedAbsmax, g.NestedQuantMap} {
						if t != nil {
							p.Reportf(t.File.Path, t.Name, "the quant state has no double quantization (no nested_* keys) but this nested tensor exists; delete it, or re-quantize the weight")
						}
					}
					continue
				}
				for _, x := range []struct {
					t    *audit.Tensor
					role string
				}{{g.NestedAbsmax, "nested_absmax"}, {g.NestedQuantMap, "nested_quant_map"}} {
					if x.t == nil {
						p.Reportf(g.Packed.File.Path, g.Base, "the quant state uses double quantization but %s.%s is missing; re-quantize the weight", g.Base, x.role)
					}
				}
				if q := g.NestedQuantMap; q != nil && !isShape(q, dtype.F32, 256) {
					p.Reportf(q.File.Path, q.Name, "nested_quant_map is %s, not F32 [256]; re-quantize the weight", q.DTypeShape())
				}
				n, ok := numel(g.State.Shape)
				if a := g.NestedAbsmax; a != nil && ok {
					want := bnb.NumBlocks(bnb.NumBlocks(n, g.State.Blocksize), bnb.NestedBlocksize)
					if a.DType != dtype.F32 || len(a.Shape) != 1 || a.NumElements() != want {
						p.Reportf(a.File.Path, a.Name, "nested_absmax is %s but %d blocks of absmax need F32 [%d] (one per %d); re-quantize the weight",
							a.DTypeShape(), bnb.NumBlocks(n, g.State.Blocksize), want, bnb.NestedBlocksize)
					}
				}
			}
		},
	}
}
