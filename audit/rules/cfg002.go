package rules

import (
	"github.com/qconv/qconv/audit"
)

func cfg002() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG002",
		Title:    "4-bit tensors but no bitsandbytes quantization_config",
		Severity: audit.Error,
		Doc: `The checkpoint holds packed bitsandbytes 4-bit weights, but config.json is
missing, has no quantization_config, or its quantization_config is not a
bitsandbytes 4-bit one (quant_method "bitsandbytes" with load_in_4bit
true). transformers then builds ordinary Linear layers and fails on the
packed shapes, or leaves those weights randomly initialized.

Fix: add the quantization_config that was used to quantize, as
BitsAndBytesConfig(...).to_dict() writes it (quant_method
"bitsandbytes", load_in_4bit true, bnb_4bit_quant_type, bnb_4bit_use_double_quant,
bnb_4bit_quant_storage "uint8", bnb_4bit_compute_dtype).`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			if !c.IsDir || !c.IsQuantized() || bnbConfig(c) != nil {
				return
			}
			switch {
			case c.Config == nil:
				p.Reportf(c.FindingFile(), "", "the checkpoint holds bitsandbytes 4-bit weights but the directory has no config.json; add one with a bitsandbytes quantization_config")
			case c.Config.Err != nil:
				// CFG001
			case c.Config.Quantization() == nil:
				p.Reportf(c.Config.Path, "", "the checkpoint holds bitsandbytes 4-bit weights but config.json has no quantization_config, so transformers cannot load them; add the BitsAndBytesConfig used to quantize (quant_method \"bitsandbytes\", load_in_4bit true)")
			default:
				p.Reportf(c.Config.Path, "", "the checkpoint holds bitsandbytes 4-bit weights but quantization_config is not a bitsandbytes 4-bit config (quant_method \"bitsandbytes\" with load_in_4bit true); fix quantization_config")
			}
		},
	}
}
