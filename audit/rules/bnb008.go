package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

func bnb008() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB008",
		Title:    "quant_map missing or not the canonical code book",
		Severity: audit.Error,
		Doc: `Each packed weight needs "<weight>.quant_map", F32 [16]: the value of each
4-bit code, which bitsandbytes writes as its fixed NF4 or FP4 code book
(FP4 code 8 is stored as +0). A different table means the codes were made
with another code book, or the tensor belongs to another quant type; the
CUDA kernels ignore the stored table and use the built-in one, while the
CPU path uses the stored one, so the same checkpoint dequantizes
differently on different devices.

Fix: re-quantize the weight, or, if only the table is damaged, write the
canonical code book for the quant type.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			for _, g := range packedGroups(c) {
				qt, ok := quantType(g)
				if !ok {
					continue // BNB004/BNB005
				}
				q := g.QuantMap
				if q == nil {
					p.Reportf(g.Packed.File.Path, g.Base, "the weight has no %s.quant_map tensor; write the canonical %s code book as F32 [16], or re-quantize", g.Base, qt)
					continue
				}
				if !isShape(q, dtype.F32, 16) {
					p.Reportf(q.File.Path, q.Name, "quant_map is %s, not F32 [16]; write the canonical %s code book, or re-quantize", q.DTypeShape(), qt)
					continue
				}
				vals, err := readF32s(c, q, 16)
				if err != nil {
					p.Reportf(q.File.Path, q.Name, "cannot read quant_map: %v; check that the file is readable and finished downloading", err)
					continue
				}
				book := bnb.CodeBook(qt)
				for i, v := range vals {
					if v != book[i] {
						p.Reportf(q.File.Path, q.Name, "quant_map[%d] is %g but the %s code book has %g there; the CUDA and CPU paths would dequantize differently: write the canonical code book, or re-quantize", i, v, qt, book[i])
						break
					}
				}
			}
		},
	}
}
