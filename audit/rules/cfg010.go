package rules

import (
	"slices"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

func cfg010() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG010",
		Title:    "float32 tensors in a 16-bit model",
		Severity: audit.Warning,
		Doc: `config.json declares the model bfloat16 or float16, but some dense tensors
are stored as F32. Loaders cast them to the model dtype, so the extra
precision is thrown away while the file (download, disk, page cache) is
twice as large for them as it needs to be; loaders that keep them in
float32 also waste GPU memory. The message gives the bytes that storing
them in the model dtype saves. Some architectures deliberately keep a
few modules in float32 (_keep_in_fp32_modules); then this is expected.
Tensors that transformers itself saves as float32 in a 16-bit model of
the architecture (formats/arch's table, such as DeepSeek-V3's
e_score_correction_bias) are not counted.

Fix: convert those tensors to the model dtype and re-save
(model.to(torch.bfloat16).save_pretrained(...)).`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			md, key, ok := modelDType(c)
			if !ok || !is16(md) {
				return
			}
			// Tensors that transformers itself stores in float32 for the
			// architecture (DeepSeek-V3's e_score_correction_bias) are
			// what a 16-bit save writes.
			a := tableArch(c)
			fs := slices.DeleteFunc(denseFloats(c), func(t *audit.Tensor) bool {
				if a == nil || t.DType != dtype.F32 {
					return false
				}
				d, ok := a.Decide(t.Name)
				return ok && d.F32
			})
			_, m := byDType(fs)
			t := m[dtype.F32]
			if t == nil {
				return
			}
			p.Reportf(c.Config.Path, t.example.Name, "config.json says %s %s but %s F32 (%s); storing them as %s saves %s",
				key, md.TorchName(), agree(t.n, "dense tensor", "is", "are"), humanBytes(t.bytes), md.TorchName(), humanBytes(t.bytes/2))
		},
	}
}
