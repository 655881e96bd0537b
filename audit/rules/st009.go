package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st009() *audit.Rule {
	return structural(safetensors.CodeTensorEntry, &audit.Rule{
		ID:    "ST009",
		Title: "malformed tensor entry",
		Doc: `A tensor entry must be an object with exactly the keys "dtype" (a string),
"shape" (an array of non-negative integers) and "data_offsets" (an array of
two integers). This one lacks a key, has a value of the wrong type, or has
an extra key (which the reference implementation silently ignores; qconv
flags it so that nothing in a header goes unnoticed).

Fix: re-save the model; do not hand-edit headers.`,
	}, resave)
}
