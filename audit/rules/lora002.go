package rules

import (
	"strings"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/convert/merge"
)

func lora002() *audit.Rule {
	return &audit.Rule{
		ID:       "LORA002",
		Title:    "LoRA factors that do not fit together or the config",
		Severity: audit.Error,
		Doc: `A module's LoRA tensors are inconsistent: lora_A without lora_B
(or the reverse), factors that are not 2-D floating-point tensors, a rank
(lora_A's rows, lora_B's columns) other than the module's r in
adapter_config.json (after rank_pattern), a lora_B.bias of the wrong
length, a tensor name outside "base_model.model." or an unknown lora_*
tensor. PEFT fails to load the adapter (size mismatch) or loads factors
into the wrong modules; qconv merge refuses it.

Fix: save the adapter again from the trained PeftModel (save_pretrained),
or correct r / rank_pattern to the ranks the tensors were trained with.`,
		Run: func(p *audit.Pass) {
			if _, _, err := adapterConfig(p.Checkpoint); err != nil {
				return // LORA001, or not an adapter
			}
			a, err := openAdapter(p.Checkpoint)
			if err != nil {
				msg := strings.TrimPrefix(err.Error(), p.Checkpoint.Dir+"/"+merge.AdapterWeightsName+": ")
				p.Reportf(adapterFile(p.Checkpoint), "", "%s; save the adapter again from the trained model, or correct r/rank_pattern", msg)
				return
			}
			a.Close()
		},
	}
}

func adapterFile(c *audit.Checkpoint) string {
	for _, f := range c.Files {
		if f.Name == merge.AdapterWeightsName {
			return f.Path
		}
	}
	return c.Path
}
