package rules

import (
	"github.com/qconv/qconv/audit"
)

func name003() *audit.Rule {
	return &audit.Rule{
		ID:       "NAME003",
		Title:    "unmerged LoRA tensors in a full checkpoint",
		Severity: audit.Warning,
		Doc: `The checkpoint holds LoRA adapter tensors (lora_A, lora_B,
lora_embedding_A, lora_embedding_B, lora_magnitude_vector) although it is
not an adapter. transformers ignores them as unexpected keys, so the model
loads without the fine-tuning: the adapter was saved but never merged.

Fix: merge the adapter into the weights (merge_and_unload()) and save
again, or save the adapter separately (PeftModel.save_pretrained writes
adapter_model.safetensors with adapter_config.json).`,
		Run: func(p *audit.Pass) {
			nameRule(p, func(n string) bool {
				return hasComponent(n, "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
			}, func(f *audit.File, n int, ex string) {
				p.Reportf(f.Path, ex, "%s unmerged LoRA adapter weights, which transformers ignores, so the model loads without the fine-tuning; merge them (merge_and_unload()) or save the adapter separately",
					agree(n, "tensor", "is", "are"))
			})
		},
	}
}
