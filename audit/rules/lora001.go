package rules

import (
	"github.com/qconv/qconv/audit"
)

func lora001() *audit.Rule {
	return &audit.Rule{
		ID:       "LORA001",
		Title:    "adapter_config.json is not a valid PEFT config",
		Severity: audit.Error,
		Doc: `The adapter directory's adapter_config.json cannot be read as a
PEFT config: invalid JSON, no peft_type, or for a LoRA adapter an r that is
not a positive integer, a lora_alpha that is not a number, a rank_pattern
or alpha_pattern that is not an object of numbers (or whose keys are not
regular expressions), or a bias other than "none", "all" and "lora_only".
PeftModel.from_pretrained fails or, worse, builds layers of other ranks
than the tensors. The other LORA rules are skipped.

Fix: regenerate the config with PeftModel.save_pretrained, or repair the
field the finding names.`,
		Run: func(p *audit.Pass) {
			if loraDir(p.Checkpoint) == "" {
				return
			}
			if _, path, err := adapterConfig(p.Checkpoint); err != nil {
				p.Reportf(path, "", "%v; regenerate it with PeftModel.save_pretrained or repair the field", err)
			}
		},
	}
}
