package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st004() *audit.Rule {
	return structural(safetensors.CodeHeaderNotUTF8, &audit.Rule{
		ID:    "ST004",
		Title: "header is not valid UTF-8",
		Doc: `The JSON header contains bytes that are not valid UTF-8. JSON text must be
UTF-8, and the reference implementation refuses the file.

Fix: re-save the model; if a tool wrote tensor names or metadata in another
encoding, fix that tool.`,
	}, resave)
}
