package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

func cfg009() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG009",
		Title:    "config dtype disagrees with the dense tensors",
		Severity: audit.Warning,
		Doc: `config.json's "dtype" (transformers v5; "torch_dtype" in v4) records the
dtype of the model's non-quantized tensors, and from_pretrained(...,
dtype="auto") loads the model in it. Here dense floating-point tensors
are stored in another dtype (float32 tensors in a 16-bit model are CFG010
instead): loading converts them, which changes their values (float16 and
bfloat16 have different ranges) or wastes memory, and tools that trust the
config misjudge the model's size.

Fix: set dtype to the tensors' dtype, or convert the tensors to the
declared dtype and re-save.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			md, key, ok := modelDType(c)
			if !ok {
				return
			}
			keys, m := byDType(denseFloats(c))
			for _, d := range keys {
				if d == md || (d == dtype.F32 && is16(md)) {
					continue
				}
				t := m[d]
				fix := "convert them to " + md.TorchName() + " or set " + key + " to " + d.TorchName()
				if len(keys) == 1 {
					fix = "set " + key + " to \"" + d.TorchName() + "\""
				}
				p.Reportf(c.Config.Path, t.example.Name, "config.json says %s %s but %s %s (%s); %s",
					key, md.TorchName(), agree(t.n, "dense tensor", "is", "are"), d, humanBytes(t.bytes), fix)
			}
		},
	}
}
