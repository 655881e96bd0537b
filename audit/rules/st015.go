package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st015() *audit.Rule {
	return structural(safetensors.CodeOffsetsGap, &audit.Rule{
		ID:    "ST015",
		Title: "gap between tensors' data",
		Doc: `Sorted by offset, the tensors' byte ranges leave a hole (or the first
one does not start at offset 0 of the data section). The reference writer
never leaves gaps, and the reference reader refuses them: unowned bytes are
where a polyglot or tampered file hides data.

Fix: re-save the model.`,
	}, "the file hides bytes no tensor owns; "+resave)
}
