package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st003() *audit.Rule {
	return structural(safetensors.CodeHeaderOutOfBounds, &audit.Rule{
		ID:    "ST003",
		Title: "header runs past the end of the file",
		Doc: `The header length in the 8-byte prefix points past the end of the file,
so the file was cut short (an interrupted download or copy) or the prefix
is corrupt.

Fix: re-download the file, or re-save the model.`,
	}, "the file is truncated: "+resave)
}
