package rules

import (
	"github.com/qconv/qconv/audit"
)

func arch002() *audit.Rule {
	return &audit.Rule{
		ID:       "ARCH002",
		Title:    "linear weight left dense that transformers quantizes",
		Severity: audit.Warning,
		Doc: `A 4-bit checkpoint keeps a tensor dense that transformers quantizes for
this architecture (the weight of an nn.Linear, or of a GPT-2 style
Conv1D), and quantization_config's llm_int8_skip_modules does not name
its module. transformers, loading the checkpoint, replaces the module by
a bitsandbytes Linear4bit and expects a packed weight with its quant
state; what it does with the dense tensor instead depends on the
version, and the layer costs 16 bits a weight instead of about 4 either
way.

The table of what transformers quantizes is formats/arch's, generated
from transformers 5.17 and bitsandbytes 0.50.2 (see ARCH001). Keeping a
layer dense on purpose is legitimate: list its module in
llm_int8_skip_modules (qconv convert --skip does), and transformers then
builds a dense Linear for it. With an explicit llm_int8_skip_modules list
(not null), transformers' default skips such as lm_head no longer apply,
so a dense lm_head that the list does not name is reported too.

Fix: convert the dense source again with qconv convert, or add the
module to quantization_config.llm_int8_skip_modules if it is meant to
stay dense.`,
		Run: func(p *audit.Pass) {
			v, ok := checkpointArch(p.Checkpoint)
			if !ok || v.a == nil || !v.a.QuantizesAnything() {
				return
			}
			for _, t := range p.Checkpoint.DenseTensors() {
				if !t.DType.IsFloat() {
					continue
				}
				d, known := v.a.Decide(t.Name)
				if !known || !v.quantizable(t.Name, d) {
					continue
				}
				why := "llm_int8_skip_modules does not name its module"
				if !d.Quantized() {
					why = "llm_int8_skip_modules, an explicit list that replaces transformers' default skips, does not name its module"
				}
				p.Reportf(t.File.Path, t.Name, "%s is dense, but %s quantizes it in %s: %s; quantize it, or list the module there if it is meant to stay dense", t.DTypeShape(), v.transformersName(), v.a, why)
			}
		},
	}
}
