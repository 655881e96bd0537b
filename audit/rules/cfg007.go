package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

func cfg007() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG007",
		Title:    "bnb_4bit_compute_dtype is not a floating-point dtype",
		Severity: audit.Error,
		Doc: `quantization_config.bnb_4bit_compute_dtype must name a torch floating-point
dtype ("bfloat16", "float16" or "float32"); transformers looks it up with
getattr(torch, name) and fails on anything else, so the model does not
load.

Fix: set bnb_4bit_compute_dtype to the dtype the model runs in, normally
"bfloat16" (or "float16" on GPUs without bfloat16).`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			b := bnbConfig(c)
			if b == nil {
				return
			}
			if d, ok := dtype.FromTorchName(b.Compute); !ok || !d.IsFloat() {
				p.Reportf(c.Config.Path, "", "bnb_4bit_compute_dtype %q is not a floating-point torch dtype, so transformers cannot load the model; set it to \"bfloat16\" (or \"float16\")", b.Compute)
			}
		},
	}
}
