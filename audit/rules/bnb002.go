package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

func bnb002() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB002",
		Title:    "packed 4-bit weight stored as bfloat16/float16",
		Severity: audit.Warning,
		Doc: `A packed 4-bit weight is stored as BF16 or F16 [n/4, 1]: the packed bytes
viewed as 16-bit floats. This is what bnb_4bit_quant_storage=bfloat16
produces, and it is legitimate for FSDP-QLoRA training, where FSDP shards
only floating-point parameters and needs the quantized weights in the same
dtype as the rest of the model.

For inference and for upload it is a trap: a loader that expects uint8
(the default storage) either rejects the tensor or, if config.json says
"uint8", numerically casts each 16-bit float to a byte and gets garbage
weights without an error. transformers loads it correctly only while
config.json's bnb_4bit_quant_storage matches the file dtype.

Fix: for inference checkpoints, qconv audit --fix DST PATH stores the same
bytes as U8 [nbytes, 1] and sets bnb_4bit_quant_storage to "uint8". Keep
the 16-bit storage only for FSDP training checkpoints.`,
		Run: func(p *audit.Pass) {
			for _, g := range packedGroups(p.Checkpoint) {
				if g.Packed.DType != dtype.BF16 && g.Packed.DType != dtype.F16 {
					continue
				}
				p.Reportf(g.Packed.File.Path, g.Base,
					"packed 4-bit weight stored as %s (FSDP-QLoRA storage): a uint8 loader rejects it or casts each %s to a byte and gets garbage; for inference store the same bytes as U8 [%d, 1] with bnb_4bit_quant_storage \"uint8\" (%s)",
					g.Packed.DTypeShape(), g.Packed.DType.TorchName(), g.Packed.Size(), fixCommand)
			}
		},
	}
}
