package rules

import (
	"strings"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/convert/merge"
	"github.com/qconv/qconv/formats/checkpoint"
)

func lora004() *audit.Rule {
	return &audit.Rule{
		ID:       "LORA004",
		Title:    "adapter that does not fit the base model",
		Severity: audit.Error,
		Doc: `Checked only with --base BASE. A LoRA module of the adapter has no
weight of that name in BASE, or one of another shape than lora_B·lora_A
(transposed for fan_in_fan_out and embeddings); a lora_B.bias belongs to a
layer without a bias (PEFT: "Impossible to merge LoRA with lora_bias=True
because the base layer has no bias"); or a tensor the adapter saves whole
(modules_to_save, trained biases) has no counterpart of the same shape in
BASE. A 4-bit BASE is compared by its weights' original shapes. PEFT fails
to load or to merge such an adapter, and so does qconv merge.

Fix: use the base model the adapter was trained on (base_model_name_or_path
in adapter_config.json).`,
		Run: func(p *audit.Pass) {
			withAdapterAndBase(p, func(a *merge.Adapter, base *checkpoint.Checkpoint) {
				for _, err := range merge.Check(base, a) {
					msg := strings.TrimPrefix(err.Error(), "merge: "+a.Weights.Path+": ")
					p.Reportf(a.Weights.Path, "", "%s; use the base model the adapter was trained on", msg)
				}
			})
		},
	}
}
