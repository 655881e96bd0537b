package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st008() *audit.Rule {
	return structural(safetensors.CodeMetadataType, &audit.Rule{
		ID:    "ST008",
		Title: "__metadata__ is not an object of strings",
		Doc: `__metadata__ must be a JSON object whose values are all strings (the
reference implementation refuses numbers, nested objects and null).

Fix: convert metadata values to strings (json.dumps them) and re-save.`,
	}, "safetensors loaders refuse the file; make every metadata value a string and re-save")
}
