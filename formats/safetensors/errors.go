package safetensors

import (
	"errors"
	"fmt"
)

// Code identifies which structural rule a file breaks. Codes are stable:
// the auditor maps each one to a rule ID, so existing values are never
// renumbered or reused; new codes are only appended.
type Code int

// The structural rules of a safetensors file, checked by [NewReader].
const (
	// CodeTooShort: the file is shorter than the 8-byte length prefix.
	CodeTooShort Code = iota + 1
	// CodeHeaderTooLarge: the header length is over 100,000,000 bytes,
	// the limit of the reference implementation.
	CodeHeaderTooLarge
	// CodeHeaderOutOfBounds: the header runs past the end of the file.
	CodeHeaderOutOfBounds
	// CodeHeaderNotUTF8: the header is not valid UTF-8.
	CodeHeaderNotUTF8
	// CodeHeaderInvalidJSON: the header is not valid JSON. This includes
	// NUL padding after the object (the reference rejects it) and nesting
	// deeper than 128 levels; trailing JSON whitespace is fine.
	CodeHeaderInvalidJSON
	// CodeHeaderNotObject: the header is valid JSON but not an object, or
	// does not start with '{'. (The reference crate accepts leading
	// whitespace: its starts_with('{') check is written but commented
	// out. No writer produces it; qconv rejects it.)
	CodeHeaderNotObject
	// CodeDuplicateKey: a key appears twice in the header object, in
	// __metadata__, or in a tensor entry. (For the first two, encoding/json
	// and the reference crate keep the last value silently, so two readers
	// may disagree about the file; qconv refuses to guess.)
	CodeDuplicateKey
	// CodeMetadataType: __metadata__ is not an object mapping strings to
	// strings (null is rejected too).
	CodeMetadataType
	// CodeTensorEntry: a tensor entry is not an object with exactly the
	// keys dtype (string), shape (array of non-negative integers) and
	// data_offsets (array of two integers). Unknown keys are rejected
	// (the reference ignores them) so that nothing in a header is silently
	// dropped.
	CodeTensorEntry
	// CodeUnknownDType: the dtype is not one of the safetensors dtypes.
	CodeUnknownDType
	// CodeSizeOverflow: the number of elements, or of bits, overflows int64.
	CodeSizeOverflow
	// CodeSubByteSize: a sub-byte dtype (F4, F6_*) tensor does not fill a
	// whole number of bytes.
	CodeSubByteSize
	// CodeSizeMismatch: data_offsets span a different number of bytes than
	// the shape and dtype need.
	CodeSizeMismatch
	// CodeOffsetsInvalid: a data offset is negative, or begin > end.
	CodeOffsetsInvalid
	// CodeOffsetsGap: the tensors, sorted by offset, leave a hole (or the
	// first one does not start at 0).
	CodeOffsetsGap
	// CodeOffsetsOverlap: two tensors' byte ranges overlap.
	CodeOffsetsOverlap
	// CodeOffsetsShared: two non-empty tensors have identical byte ranges
	// (aliased storage, which the reference writer never produces).
	CodeOffsetsShared
	// CodeDataOutOfBounds: a tensor's data runs past the end of the file.
	CodeDataOutOfBounds
	// CodeTrailingBytes: the file has bytes after the last tensor's data
	// (for example a polyglot file hiding another format there).
	CodeTrailingBytes
	// CodeRankTooLarge: a shape has more than MaxRank dimensions.
	CodeRankTooLarge

	numCodes
)

var codeNames = [numCodes]string{
	"",
	"too-short",
	"header-too-large",
	"header-out-of-bounds",
	"header-not-utf8",
	"header-invalid-json",
	"header-not-object",
	"duplicate-key",
	"metadata-type",
	"tensor-entry",
	"unknown-dtype",
	"size-overflow",
	"sub-byte-size",
	"size-mismatch",
	"offsets-invalid",
	"offsets-gap",
	"offsets-overlap",
	"offsets-shared",
	"data-out-of-bounds",
	"trailing-bytes",
	"rank-too-large",
}

// Codes returns every defined Code in numeric order.
func Codes() []Code {
	out := make([]Code, 0, numCodes-1)
	for c := CodeTooShort; c < numCodes; c++ {
		out = append(out, c)
	}
	return out
}

// String returns the code's short kebab-case name, such as
// "header-too-large".
func (c Code) String() string {
	if c <= 0 || c >= numCodes {
		return fmt.Sprintf("Code(%d)", int(c))
	}
	return codeNames[c]
}

// ErrFormat is matched by every *FormatError: errors.Is(err, ErrFormat)
// reports whether err says the file is not a valid safetensors file (as
// opposed to an I/O error).
var ErrFormat = errors.New("safetensors: invalid format")

// ErrNoTensor is returned (wrapped) by [Reader.ReadTensor] for a name the
// file does not hold.
var ErrNoTensor = errors.New("safetensors: no such tensor")

// FormatError describes a broken structural rule. Use errors.As to get it
// from errors returned by this package (which may wrap it with a path).
type FormatError struct {
	Code Code // which rule is broken
	// Offset is the absolute file offset the problem was found at: a byte
	// of the prefix or header for header problems, the header position of
	// the tensor's entry for entry problems, and the absolute position of
	// the tensor data for layout problems (gaps, overlaps, bounds).
	Offset int64
	Tensor string // tensor name, or "" if the problem is not in one tensor
	Msg    string // human-readable detail, without the "safetensors: " prefix
}

// Error formats the error as "safetensors: tensor "name": msg", leaving out
// the tensor part when Tensor is empty.
func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("safetensors: tensor %q: %s", e.Tensor, e.Msg)
	}
	return "safetensors: " + e.Msg
}

// Is reports whether target is ErrFormat.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

func formatErr(code Code, off int64, tensor, format string, args ...any) *FormatError {
	return &FormatError{Code: code, Offset: off, Tensor: tensor, Msg: fmt.Sprintf(format, args...)}
}
