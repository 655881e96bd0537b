package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
)

func bnb011() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB011",
		Title:    "invalid block size",
		Severity: audit.Error,
		Doc: `The quant state's "blocksize" must be one bitsandbytes supports for 4-bit
quantization: 32 (bitsandbytes >= 0.50), 64, 128, 256, 512, 1024, 2048
or 4096; transformers always uses 64. With double quantization
"nested_blocksize" is always 256. Other values have no kernel: loading
fails or dequantization reads the wrong scales.

Fix: re-quantize the weight with a supported block size.`,
		Run: func(p *audit.Pass) {
			for _, g := range packedGroups(p.Checkpoint) {
				if len(g.States) != 1 {
					continue // BNB003
				}
				s := g.States[0]
				bs, bsOK, nbs, nbsOK := blocksizeFields(g)
				if bsOK && !bnb.ValidBlocksize(int(bs)) {
					p.Reportf(s.File.Path, s.Name, "blocksize %d is not supported (use 64; valid: 32, 64, 128, 256, 512, 1024, 2048, 4096); re-quantize the weight", bs)
				}
				if nbsOK && nbs != bnb.NestedBlocksize {
					p.Reportf(s.File.Path, s.Name, "nested_blocksize %d is not 256, the only size bitsandbytes uses; re-quantize the weight", nbs)
				}
			}
		},
	}
}
