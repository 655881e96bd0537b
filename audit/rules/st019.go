package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st019() *audit.Rule {
	return structural(safetensors.CodeTrailingBytes, &audit.Rule{
		ID:    "ST019",
		Title: "bytes after the last tensor",
		Doc: `The file continues after the end of the last tensor's data. The reference
reader refuses such files; the extra bytes may be another file appended to
this one (a polyglot) or leftovers of an in-place rewrite.

Fix: re-save the model.`,
	}, "drop them: "+resave)
}
