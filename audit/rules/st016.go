package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st016() *audit.Rule {
	return structural(safetensors.CodeOffsetsOverlap, &audit.Rule{
		ID:    "ST016",
		Title: "overlapping tensor data",
		Doc: `Two tensors' byte ranges overlap partially. A loader would give them
shared bytes, so the file cannot have been written by a correct writer.

Fix: re-save the model.`,
	}, "writing one tensor would change another; "+resave)
}
