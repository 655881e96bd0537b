package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/convert/merge"
	"github.com/qconv/qconv/formats/checkpoint"
)

func lora007() *audit.Rule {
	return &audit.Rule{
		ID:       "LORA007",
		Title:    "base model of an adapter that cannot be checked",
		Severity: audit.Info,
		Doc: `Checked only with --base BASE. adapter_config.json's
base_model_name_or_path cannot be compared with BASE: a local path that
does not exist on this machine (the adapter was trained elsewhere), or a
Hub ID while BASE's config.json has no _name_or_path and BASE's directory
has another name. LORA004 still checks every module's shape against BASE.

Fix: nothing, if BASE is the right model; naming BASE's directory after the
Hub ID (or keeping _name_or_path in its config.json) lets the check run.`,
		Run: func(p *audit.Pass) {
			withAdapterAndBase(p, func(a *merge.Adapter, base *checkpoint.Checkpoint) {
				if _, why := baseIdentity(a.Config, base); why != "" {
					p.Reportf(loraDir(p.Checkpoint)+"/"+merge.AdapterConfigName, "", "%s", why)
				}
			})
		},
	}
}
