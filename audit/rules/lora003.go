package rules

import (
	"strings"

	"github.com/qconv/qconv/audit"
)

func lora003() *audit.Rule {
	return &audit.Rule{
		ID:       "LORA003",
		Title:    "adapter that qconv merge does not merge",
		Severity: audit.Warning,
		Doc: `The adapter uses a PEFT method or setting that qconv merge does
not fold into a base model: another peft_type than LORA, DoRA (use_dora:
the merged weight is rescaled by a learned magnitude per column), QA-LoRA,
layer_replication, trainable_token_indices, target_parameters or aLoRA.
The adapter may be perfectly valid for PEFT; it just cannot be merged by
qconv.

Fix: merge it with PEFT (merge_and_unload()) if the method supports
merging, or keep serving it as an adapter.`,
		Run: func(p *audit.Pass) {
			cfg, path, err := adapterConfig(p.Checkpoint)
			if err != nil || len(cfg.Unsupported) == 0 {
				return
			}
			p.Reportf(path, "", "qconv merge cannot merge this adapter: %s; merge it with PEFT if the method allows, or serve it as an adapter", strings.Join(cfg.Unsupported, "; "))
		},
	}
}
