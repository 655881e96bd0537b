package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st014() *audit.Rule {
	return structural(safetensors.CodeOffsetsInvalid, &audit.Rule{
		ID:    "ST014",
		Title: "invalid data offsets",
		Doc: `A tensor's data_offsets have begin > end, or a negative offset, so the
tensor has no valid byte range: the header is corrupt or was edited by
hand. No safetensors loader accepts the file.

Fix: re-save the model with a safetensors library; do not hand-edit
data_offsets.`,
	}, resave)
}
