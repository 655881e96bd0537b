package dequant

import (
	"fmt"
	"slices"

	"github.com/qconv/qconv/formats/arch"
	"github.com/qconv/qconv/formats/checkpoint"
)

// Architecture returns formats/arch's entry for the architecture that the
// checkpoint's config.json names ("architectures", else "model_type"), or
// nil when there is no config.json or the table does not know the model.
// It fails for an architecture whose 4-bit checkpoints transformers
// neither writes nor loads (the table's Refuse, such as FalconForCausalLM),
// naming the architecture and the reason.
func Architecture(ck *checkpoint.Checkpoint) (*arch.Arch, error) {
	a := arch.Default().LookupConfig(ck.Config)
	if a != nil && a.Refuse != "" {
		return nil, fmt.Errorf("%s: config.json names %v: %s (formats/arch, from transformers %s), so no 4-bit checkpoint of it is one that transformers loads; refusing it",
			ck.Path, a, a.Refuse, arch.Default().Transformers)
	}
	return a, nil
}

// SourceShape returns the shape the weight w has in the dense checkpoint
// it was quantized from, and whether that is the transpose of its quant
// state's shape: a GPT-2 style Conv1D weight, stored [in, out], which
// transformers quantizes as its [out, in] transpose (the table of a, which
// may be nil, says which weights those are). Other weights have the quant
// state's shape.
func SourceShape(a *arch.Arch, w *Weight) (shape []int64, transposed bool, err error) {
	if a != nil {
		if d, ok := a.Decide(w.Name); ok && d.Action == arch.QuantizeTransposed {
			if len(w.State.Shape) != 2 {
				return nil, false, fmt.Errorf("tensor %q: %v quantizes it transposed (a Conv1D weight), but its quant-state shape %v is not 2-D", w.Name, a, w.State.Shape)
			}
			return []int64{w.State.Shape[1], w.State.Shape[0]}, true, nil
		}
	}
	return slices.Clone(w.State.Shape), false, nil
}
