package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

func cfg011() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG011",
		Title:    "float32 storage dtype leaked into the model dtype",
		Severity: audit.Warning,
		Doc: `A 4-bit checkpoint whose bnb_4bit_compute_dtype is bfloat16 or float16
keeps its dense tensors (embeddings, norms, lm_head, biases) in F32 and
declares the model float32 (or declares no dtype). This is the other half
of the float32-storage mistake: QLoRA recipes that set
bnb_4bit_quant_storage=float32 also load the model with dtype=float32
(the PEFT SFT example did until April 2024), and save_pretrained then
writes the non-quantized tensors in float32. The model loads, but the
dense tensors take twice the memory they need, and Flash-Attention-2
refuses the model ("only supports torch.float16 and torch.bfloat16").

Fix: load the model with dtype=torch.bfloat16 (the compute dtype) and
re-save, or convert the dense F32 tensors to bfloat16 and set "dtype":
"bfloat16" in config.json. The message gives the bytes this saves.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			b := bnbConfig(c)
			if b == nil || !c.IsQuantized() {
				return
			}
			cd, ok := dtype.FromTorchName(b.Compute)
			if !ok || !is16(cd) {
				return
			}
			md, key, declared := modelDType(c)
			if declared && md != dtype.F32 {
				return // CFG009/CFG010
			}
			_, m := byDType(denseFloats(c))
			t := m[dtype.F32]
			if t == nil {
				return
			}
			what := key + " is float32"
			if !declared {
				what = "config.json declares no dtype"
			}
			p.Reportf(c.Config.Path, t.example.Name, "%s and %s F32 (%s) while bnb_4bit_compute_dtype is %s: %s would save %s, and Flash-Attention-2 refuses float32 models; convert the dense tensors to %s and set \"dtype\": %q (re-save with dtype=torch.%s)",
				what, agree(t.n, "dense tensor", "is", "are"), humanBytes(t.bytes), cd.TorchName(), cd.TorchName(), humanBytes(t.bytes/2), cd.TorchName(), cd.TorchName(), cd.TorchName())
		},
	}
}
