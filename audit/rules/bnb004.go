package rules

import (
	"strings"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

func bnb004() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB004",
		Title:    "quant-state JSON is invalid",
		Severity: audit.Error,
		Doc: `The "<weight>.quant_state.bitsandbytes__<type>" tensor must be a 1-D U8
tensor holding the UTF-8 bytes of a JSON object with the keys quant_type,
blocksize, dtype ("bfloat16", "float16" or "float32") and shape, plus, with
double quantization, all three of nested_blocksize, nested_dtype and
nested_offset (a finite number). bitsandbytes rejects unknown keys. This
one does not parse, has a missing, unknown or repeated key, a value of the
wrong type, or is not a U8 vector; or, in a model (a checkpoint with a
config.json), its shape is not 2-D: transformers quantizes only the 2-D
weights of Linear layers. (Block sizes are checked by BNB011.)

Fix: re-quantize the weight with bitsandbytes >= 0.41.3, or rewrite the
blob as json.dumps of QuantState.as_dict(packed=True)'s non-tensor items.`,
		Run: func(p *audit.Pass) {
			for _, g := range packedGroups(p.Checkpoint) {
				if len(g.States) != 1 {
					continue // BNB003
				}
				s := g.States[0]
				if s.DType != dtype.U8 || len(s.Shape) != 1 {
					p.Reportf(s.File.Path, s.Name, "the quant-state tensor is %s; it must be a 1-D U8 tensor of JSON bytes: re-save it as torch.uint8", s.DTypeShape())
				}
				if g.State != nil && p.Checkpoint.Config != nil {
					// In a model (a checkpoint with config.json) a 4-bit
					// weight is a Linear weight: 2-D (formats/bnb's
					// judgement, which dequant and verify share).
					if _, err := bnb.CheckShape(g.State.Shape, true); err != nil && len(g.State.Shape) != 2 {
						p.Reportf(s.File.Path, s.Name, "%v; transformers cannot load it into its Linear layer: re-quantize the weight", err)
					}
				}
				if g.StateErr == nil || blocksizeError(g) {
					continue
				}
				p.Reportf(s.File.Path, s.Name, "the quant-state JSON is invalid: %v; re-quantize the weight, or rewrite the blob with the keys quant_type, blocksize, dtype, shape (and nested_blocksize, nested_dtype, nested_offset with double quantization)", strings.TrimPrefix(g.StateErr.Error(), "pyjson: "))
			}
		},
	}
}
