package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st014() *audit.Rule {
	return structural(safetensors.CodeOffsetsInvalid, &audit.Rule{
		ID:    "ST014",
		Title: "invalid data offsets",
		Doc: `A tensor's data_offsets have begin > end, or a negative offset.

Fix: re-save the model.`,
	}, resave)
}
