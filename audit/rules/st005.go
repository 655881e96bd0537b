package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st005() *audit.Rule {
	return structural(safetensors.CodeHeaderInvalidJSON, &audit.Rule{
		ID:    "ST005",
		Title: "header is not valid JSON",
		Doc: `The header is not valid JSON: a syntax error, NUL padding after the object
(the reference implementation pads with spaces and rejects anything else),
or nesting deeper than 128 levels.

Fix: re-save the model with a safetensors library; a hand-edited header
must stay valid JSON and be padded with spaces only.`,
	}, resave)
}
