package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st002() *audit.Rule {
	return structural(safetensors.CodeHeaderTooLarge, &audit.Rule{
		ID:    "ST002",
		Title: "header length over 100,000,000 bytes",
		Doc: `The 8-byte prefix declares a JSON header longer than 100,000,000 bytes, the
limit of the reference implementation (huggingface/safetensors), which
refuses such files. Real headers are kilobytes to a few megabytes; a huge
length almost always means the first 8 bytes are not a safetensors prefix
(another file format, or a corrupt file).

Fix: re-download or re-save the file.`,
	}, "no safetensors loader will read it: the length prefix is corrupt, or the file is not safetensors; "+resave)
}
