package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st017() *audit.Rule {
	return structural(safetensors.CodeOffsetsShared, &audit.Rule{
		ID:    "ST017",
		Title: "two tensors share the same bytes",
		Doc: `Two non-empty tensors have identical byte ranges: aliased storage, which
the reference writer never produces (it refuses shared tensors and
save_pretrained drops tied duplicates). Loaders disagree on such files.

Fix: save each tied weight once and re-save.`,
	}, "save each tied weight once (save_pretrained drops tied duplicates) and re-save")
}
