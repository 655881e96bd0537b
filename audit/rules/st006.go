package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st006() *audit.Rule {
	return structural(safetensors.CodeHeaderNotObject, &audit.Rule{
		ID:    "ST006",
		Title: "header is not a JSON object",
		Doc: `The header is valid JSON but not an object (or does not start with "{",
which the reference implementation requires: no leading whitespace). A
safetensors header maps tensor names to entries.

Fix: re-save the model.`,
	}, resave)
}
