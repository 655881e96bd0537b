package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/arch"
)

func arch001() *audit.Rule {
	return &audit.Rule{
		ID:       "ARCH001",
		Title:    "4-bit tensor that the architecture keeps dense",
		Severity: audit.Error,
		Doc: `A packed 4-bit weight is the weight of a module that transformers does
not quantize for this architecture (config.json's "architectures"[0], or
its "model_type"), so the checkpoint does not load: transformers builds a
dense module there and then meets a uint8 tensor of the wrong shape and
quant-state tensors it does not expect, or, for mixture-of-experts
models, fails on the first forward pass.

What transformers quantizes comes from formats/arch's table, generated
from transformers 5.17 and bitsandbytes 0.50.2 by building every
architecture and loading it with BitsAndBytesConfig(load_in_4bit=True).
Kept dense are: output embeddings (lm_head), nn.Embedding weights
(including T5's relative_attention_bias), normalization layers (a 1-D norm
weight quantized with --include '*norm*'), modules in the model's
_keep_in_fp32_modules (T5's "wo"), mixture-of-experts experts (fused into
3-D parameters when transformers 5 loads them) and routers, subclasses of
nn.Linear, and every layer of an architecture transformers does not
quantize at all (FalconForCausalLM). A module that quantization_config's
llm_int8_skip_modules names is kept dense too. An explicit
llm_int8_skip_modules list (not null) replaces transformers' default
skips, so a quantized lm_head then loads unless the list names it.

Architectures the table does not know are not checked (ARCH003 says so).

Fix: convert the dense source again with qconv convert, which quantizes
exactly what transformers quantizes, without a --include that matches
these tensors; or dequantize the checkpoint (qconv dequant) first.`,
		Run: func(p *audit.Pass) {
			v, ok := checkpointArch(p.Checkpoint)
			if !ok || v.a == nil {
				return
			}
			none := !v.a.QuantizesAnything()
			for _, g := range packedGroups(p.Checkpoint) {
				at := g.Packed.File.Path
				if none {
					p.Reportf(at, g.Base, "packed 4-bit weight of %s, which %s cannot load quantized: %s; use the dense model", v.a, v.transformersName(), v.a.Refuse)
					continue
				}
				d, known := v.a.Decide(g.Base)
				if !known || v.quantizable(g.Base, d) {
					continue
				}
				if d.Quantized() {
					p.Reportf(at, g.Base, "packed 4-bit weight, but quantization_config.llm_int8_skip_modules names its module %q, so transformers builds a dense Linear and cannot load it; drop the module from the list or keep the weight dense", arch.Module(g.Base))
					continue
				}
				p.Reportf(at, g.Base, "packed 4-bit weight, but %s keeps it dense in %s: %s; the checkpoint does not load. Convert again without quantizing it", v.transformersName(), v.a, reasonText(d.Reason))
			}
		},
	}
}
