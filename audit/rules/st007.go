package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st007() *audit.Rule {
	return structural(safetensors.CodeDuplicateKey, &audit.Rule{
		ID:    "ST007",
		Title: "duplicate key in the header",
		Doc: `A key appears twice: two tensors with the same name, or a repeated key
inside a tensor entry or __metadata__. JSON parsers silently keep one of
them (serde and encoding/json the last), so different tools may read
different tensors from the same file; qconv refuses to guess.

Fix: re-save the model from a state dict (names are unique there).`,
	}, "loaders disagree on which entry wins; re-save the model from its state dict, where names are unique")
}
