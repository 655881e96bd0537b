package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st001() *audit.Rule {
	return structural(safetensors.CodeTooShort, &audit.Rule{
		ID:    "ST001",
		Title: "file shorter than the 8-byte header length",
		Doc: `A safetensors file starts with an 8-byte little-endian header length. This
file is shorter than that, so it is empty, truncated, or not a safetensors
file at all (for example a Git LFS pointer that was never fetched).

Fix: fetch the real file (git lfs pull, or huggingface-cli download), or
re-save the model.`,
	}, "the file is empty, truncated or not a safetensors file: "+resave)
}
