package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

func cfg008() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG008",
		Title:    "4-bit compute in float32 for a 16-bit model",
		Severity: audit.Info,
		Doc: `bnb_4bit_compute_dtype is "float32" (also the default when the key is
absent) while the model's dtype is bfloat16 or float16. The 4-bit layers
then dequantize to float32 and multiply in float32: correct, but slower
and with larger activations than computing in the model's dtype. This is
a choice, not an error, so the finding is informational.

Fix: set bnb_4bit_compute_dtype to the model dtype when quantizing
(BitsAndBytesConfig(bnb_4bit_compute_dtype=torch.bfloat16)), or in
config.json.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			b := bnbConfig(c)
			if b == nil {
				return
			}
			md, key, ok := modelDType(c)
			if cd, cok := dtype.FromTorchName(b.Compute); !cok || cd != dtype.F32 || !ok || !is16(md) {
				return
			}
			p.Reportf(c.Config.Path, "", "bnb_4bit_compute_dtype is float32 but %s is %s, so 4-bit layers compute in float32 (slower, bigger activations); set bnb_4bit_compute_dtype to %q unless float32 compute is intended",
				key, md.TorchName(), md.TorchName())
		},
	}
}
