package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

func cfg006() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG006",
		Title:    "bnb_4bit_quant_storage disagrees with the packed weights' dtype",
		Severity: audit.Error,
		Doc: `quantization_config.bnb_4bit_quant_storage ("uint8" when absent) must be
the file dtype of the packed 4-bit weights. transformers (v5) gives each
packed weight the storage dtype before loading, so a float file tensor
with a config that says "uint8" is numerically cast to bytes: the model
loads without any error and with garbage weights. (A U8 file with a float
storage config happens to load, since integers are not cast, but the
config still misdescribes the checkpoint.)

Fix: qconv audit --fix DST PATH stores packed weights as U8 and sets the
storage to "uint8", which is always correct. Never "fix" only the config.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			b := bnbConfig(c)
			if b == nil {
				return
			}
			want, ok := dtype.FromTorchName(b.Storage)
			if !ok {
				p.Reportf(c.Config.Path, "", "bnb_4bit_quant_storage %q is not a torch dtype; set it to \"uint8\" and store packed weights as U8 (%s)", b.Storage, fixCommand)
				return
			}
			var bad tally
			for _, g := range packedGroups(c) {
				if g.Packed.DType != want {
					bad.add(g.Packed)
				}
			}
			if bad.n == 0 {
				return
			}
			got := bad.example.DType
			if got.IsFloat() && want == dtype.U8 {
				p.Reportf(c.Config.Path, bad.example.Name, "bnb_4bit_quant_storage is \"uint8\" but %s stored as %s: transformers casts their values to uint8 and silently loads garbage; store the bytes as U8 (%s)",
					weightsAre(bad.n), got, fixCommand)
				return
			}
			p.Reportf(c.Config.Path, bad.example.Name, "bnb_4bit_quant_storage is %q but %s stored as %s; store packed weights as U8 with storage \"uint8\" (%s)",
				b.Storage, weightsAre(bad.n), got, fixCommand)
		},
	}
}
