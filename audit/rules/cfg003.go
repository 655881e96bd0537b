package rules

import (
	"github.com/qconv/qconv/audit"
)

func cfg003() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG003",
		Title:    "bitsandbytes 4-bit config but no 4-bit tensors",
		Severity: audit.Error,
		Doc: `config.json has a bitsandbytes 4-bit quantization_config, so transformers
treats the checkpoint as pre-quantized, but no tensor is a packed 4-bit
weight (none has a quant_state.bitsandbytes__* sibling). Loading fails or
misreads the dense weights as packed data. This happens when a config is
copied from a quantized model to an unquantized one.

Fix: remove quantization_config from config.json (quantize at load time
with from_pretrained(..., quantization_config=...) instead), or save the
quantized model.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			if bnbConfig(c) == nil || c.IsQuantized() || len(c.Tensors()) == 0 {
				return
			}
			for _, f := range c.MemberFiles() {
				if f.Reader == nil {
					return // the shard's own finding comes first
				}
			}
			p.Reportf(c.Config.Path, "", "quantization_config declares a bitsandbytes 4-bit model but no tensor is a packed 4-bit weight; remove quantization_config, or save the quantized model")
		},
	}
}
