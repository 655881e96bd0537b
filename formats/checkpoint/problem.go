package checkpoint

import (
	"strconv"
	"strings"
)

// Code identifies the kind of a Problem. Codes are stable: the auditor maps
// them to rule IDs, so values are never renumbered or reused; new codes are
// only appended.
type Code int

// The kinds of checkpoint problems.
const (
	// CodeNotFound: the path does not exist or cannot be read.
	CodeNotFound Code = iota + 1
	// CodeNoWeights: a directory holds neither model.safetensors nor
	// model.safetensors.index.json.
	CodeNoWeights
	// CodeBothLayouts: a directory holds both model.safetensors and
	// model.safetensors.index.json. transformers loads model.safetensors
	// and ignores the index; other loaders may not. The lenient view
	// follows transformers.
	CodeBothLayouts
	// CodeShardInvalid: a safetensors file cannot be opened or breaks a
	// structural rule; Err wraps the *safetensors.FormatError or I/O error.
	CodeShardInvalid
	// CodeIndexInvalid: the index file is not valid JSON (including
	// duplicate keys) or does not have the expected structure and types.
	CodeIndexInvalid
	// CodeIndexUnsafePath: the index names a shard by a path that is
	// absolute, contains a path separator, or is "." or "..".
	CodeIndexUnsafePath
	// CodeShardMissing: the index names a shard file that does not exist.
	CodeShardMissing
	// CodeTensorMissing: the index maps a tensor to a shard that does not
	// hold it.
	CodeTensorMissing
	// CodeTensorUnlisted: a shard holds a tensor that the index does not
	// list.
	CodeTensorUnlisted
	// CodeTensorDuplicate: two shards hold a tensor of the same name.
	CodeTensorDuplicate
	// CodeTotalSize: the index's metadata.total_size is not the sum of the
	// byte sizes of the checkpoint's tensors.
	CodeTotalSize
	// CodeConfigInvalid: config.json is not a valid JSON object (duplicate
	// keys count as invalid).
	CodeConfigInvalid
)

var codeNames = [...]string{
	CodeNotFound:        "not-found",
	CodeNoWeights:       "no-weights",
	CodeBothLayouts:     "both-layouts",
	CodeShardInvalid:    "shard-invalid",
	CodeIndexInvalid:    "index-invalid",
	CodeIndexUnsafePath: "index-unsafe-path",
	CodeShardMissing:    "shard-missing",
	CodeTensorMissing:   "tensor-missing",
	CodeTensorUnlisted:  "tensor-unlisted",
	CodeTensorDuplicate: "tensor-duplicate",
	CodeTotalSize:       "total-size",
	CodeConfigInvalid:   "config-invalid",
}

// Codes returns every defined Code in numeric order.
func Codes() []Code {
	out := make([]Code, 0, len(codeNames)-1)
	for c := CodeNotFound; int(c) < len(codeNames); c++ {
		out = append(out, c)
	}
	return out
}

// String returns the code's short kebab-case name, such as "shard-missing".
func (c Code) String() string {
	if c > 0 && int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Code(" + strconv.Itoa(int(c)) + ")"
}

// A Problem is one inconsistency in a checkpoint. It is also the error type
// returned by Open and ParseIndex: use errors.As to get its fields.
type Problem struct {
	Code   Code
	File   string // path of the file at fault (index, shard, config), or the path given to Open
	Tensor string // tensor name, or "" if the problem is not about one tensor
	Msg    string // human-readable detail, without file or tensor
	Err    error  // underlying cause (*safetensors.FormatError, *pyjson.SyntaxError, I/O error), or nil
}

// Error formats the problem as
// `checkpoint: FILE: tensor "NAME": MSG`, leaving out empty parts.
func (p *Problem) Error() string {
	var b strings.Builder
	b.WriteString("checkpoint: ")
	if p.File != "" {
		b.WriteString(p.File)
		b.WriteString(": ")
	}
	if p.Tensor != "" {
		b.WriteString("tensor ")
		b.WriteString(strconv.Quote(p.Tensor))
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Unwrap returns the underlying cause.
func (p *Problem) Unwrap() error { return p.Err }
