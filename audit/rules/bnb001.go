package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

func bnb001() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB001",
		Title:    "packed 4-bit weight stored as float32 (or another non-uint8 dtype)",
		Severity: audit.Error,
		Doc: `A packed 4-bit weight (a tensor with a quant_state.bitsandbytes__* sibling)
is stored as F32 (or F64, I8 or another dtype other than U8, BF16, F16).
The bytes are the same packed 4-bit codes in every case: bitsandbytes
allocates the packed buffer as [(n+1)/(2*itemsize), 1] of the
bnb_4bit_quant_storage dtype and writes raw bytes into it, so with
float32 storage an F32 [n/8, 1] tensor holds bytes, not numbers.

Loaders and kernels that expect uint8 fail on it or misread it;
Flash-Attention-style kernels see float32 parameters; and if config.json
says "bnb_4bit_quant_storage": "uint8" (for example after someone "fixed"
the config), transformers numerically casts the float32 values to uint8
and loads garbage weights without any error.

Fix: qconv audit --fix DST PATH writes a copy where each such tensor is U8
[nbytes, 1] with the same bytes and bnb_4bit_quant_storage is "uint8".
Never convert the values numerically.`,
		Run: func(p *audit.Pass) {
			for _, g := range packedGroups(p.Checkpoint) {
				switch g.Packed.DType {
				case dtype.U8, dtype.BF16, dtype.F16:
					continue
				}
				p.Reportf(g.Packed.File.Path, g.Base,
					"packed 4-bit weight stored as %s (%d bytes of packed codes viewed as %s): uint8 loaders misread it, and a config saying uint8 silently loads garbage; store the same bytes as U8 [%d, 1] with bnb_4bit_quant_storage \"uint8\" (%s)",
					g.Packed.DTypeShape(), g.Packed.Size(), g.Packed.DType.TorchName(), g.Packed.Size(), fixCommand)
			}
		},
	}
}
