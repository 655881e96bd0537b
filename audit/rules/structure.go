package rules

import (
	"errors"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

// structural completes r as the rule for one safetensors.Code: it reports
// every file that formats/safetensors refused with that code. fix says
// how to repair such a file and ends the message.
func structural(code safetensors.Code, r *audit.Rule, fix string) *audit.Rule {
	r.Severity = audit.Error
	r.Run = func(p *audit.Pass) {
		for _, f := range p.Checkpoint.Files {
			var fe *safetensors.FormatError
			if errors.As(f.Err, &fe) && fe.Code == code {
				p.Reportf(f.Path, fe.Tensor, "%s (byte %d); %s", fe.Msg, fe.Offset, fix)
			}
		}
	}
	return r
}

// mappedCode reports whether a structural rule handles code; ST021
// reports the others.
func mappedCode(code safetensors.Code) bool {
	switch code {
	case safetensors.CodeTooShort, safetensors.CodeHeaderTooLarge, safetensors.CodeHeaderOutOfBounds,
		safetensors.CodeHeaderNotUTF8, safetensors.CodeHeaderInvalidJSON, safetensors.CodeHeaderNotObject,
		safetensors.CodeDuplicateKey, safetensors.CodeMetadataType, safetensors.CodeTensorEntry,
		safetensors.CodeUnknownDType, safetensors.CodeSizeOverflow, safetensors.CodeSubByteSize,
		safetensors.CodeSizeMismatch, safetensors.CodeOffsetsInvalid, safetensors.CodeOffsetsGap,
		safetensors.CodeOffsetsOverlap, safetensors.CodeOffsetsShared, safetensors.CodeDataOutOfBounds,
		safetensors.CodeTrailingBytes, safetensors.CodeRankTooLarge:
		return true
	}
	return false
}

// resave is the usual fix for a broken file.
const resave = "re-download the file, or re-save the model with safetensors (save_pretrained or safetensors.torch.save_file)"

// StructuralRuleID returns the ID of the ST rule that reports a file which
// formats/safetensors refused with code ("ST002" for
// safetensors.CodeHeaderTooLarge), so that other commands name a broken
// file's problem with the same ID as the audit. It runs the ST rules on a
// file with that error, so it cannot disagree with them; "ST021" reports
// the codes no other rule maps.
func StructuralRuleID(code safetensors.Code) string {
	var st []*audit.Rule
	for _, r := range All() {
		if audit.GroupPrefix(r.ID) == "ST" {
			st = append(st, r)
		}
	}
	c := &audit.Checkpoint{Files: []*audit.File{{Path: "f.safetensors", Name: "f.safetensors", Member: true,
		Err: &safetensors.FormatError{Code: code}}}}
	for _, d := range audit.RunRules(c, st) {
		return d.Rule
	}
	return "ST021"
}
