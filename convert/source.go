package convert

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/pyjson"
)

// A Source is a checkpoint as the pipeline reads it: a list of tensors,
// each with a reader of its bytes, instead of the tensors of a file. It is
// how other commands reuse the pipeline: qconv merge presents the merged
// weights of a base model and a LoRA adapter as tensors whose bytes are
// computed when they are read (convert/merge), and everything else
// (planning, sharding, 4-bit quantization or a dense output, parallel
// bounded-memory writing, resume, progress) is Convert's.
type Source struct {
	// Checkpoint is the checkpoint the tensors come from. Its path names
	// the source in messages, its shard files are part of what resume
	// checks, and the small files of its directory (tokenizer,
	// generation_config.json, ...) are copied to the output. It stays
	// open (the caller closes it).
	Checkpoint *checkpoint.Checkpoint
	// Config is the config.json the output's is made from; nil means
	// Checkpoint.Config.
	Config *pyjson.Value
	// Tensors are the tensors, in any order.
	Tensors []SourceTensor
	// State and Inputs are, besides the options and Checkpoint's shard
	// files, what the output depends on: settings (name to value) and
	// more input files (paths; their size and modification time are
	// recorded). An interrupted run is resumed only if they are the same.
	State  map[string]string
	Inputs []string
}

// A SourceTensor is one tensor of a Source.
type SourceTensor struct {
	Name  string
	DType dtype.DType
	Shape []int64
	// Shard is the index in Checkpoint.Shards of the file the tensor
	// stands for; output files follow the source's order of shards.
	Shard int
	// Data reads the tensor's bytes: the elements in row-major order,
	// little-endian, in DType, at offsets 0 to NumElements·DType.Size().
	// It must be safe for concurrent use. Reads are of whole elements.
	Data io.ReaderAt
	// OwnDType keeps the tensor in DType whatever the model dtype
	// (Options.DType): a kept tensor is not cast, a quantized one is
	// quantized from its own values and its quant state records DType.
	OwnDType bool
	// Verbatim copies the tensor's bytes into the output unchanged, under
	// its name and in its dtype: it is neither cast nor quantized, no
	// selection rule or architecture decides it, and it is exempt from
	// the already-quantized check. It is how a bitsandbytes 4-bit weight
	// and its quant-state companions pass through a merge untouched, as
	// PEFT leaves a 4-bit layer that no adapter changes. A verbatim
	// companion ("<w>.absmax", "<w>.quant_map", "<w>.nested_absmax",
	// "<w>.nested_quant_map", "<w>.quant_state.bitsandbytes__<type>") is
	// placed right after its weight, in the order of a freshly quantized
	// weight's entries, so that sharding treats both alike.
	Verbatim bool
}

// ConvertSource is Convert (see there) with the tensors of src instead of
// those of a checkpoint on disk. dst, opts and the returned Summary are as
// for Convert; Summary.Src is src.Checkpoint.Path and Summary.InputBytes
// the size of its weight files.
func ConvertSource(ctx context.Context, src *Source, dst string, opts Options) (*Summary, error) {
	start := time.Now()
	s, err := opts.settings()
	if err != nil {
		return nil, err
	}
	ck := src.Checkpoint
	if ck == nil {
		return nil, fmt.Errorf("convert: a Source needs its Checkpoint")
	}
	in := &source{ck: ck, config: src.Config, state: src.State, inputs: src.Inputs}
	if in.config == nil {
		in.config = ck.Config
	}
	for _, sh := range ck.Shards {
		in.files = append(in.files, sh.Name)
		in.bytes += sh.Size()
	}
	infos := make([]safetensors.TensorInfo, len(src.Tensors))
	for i, t := range src.Tensors {
		if t.Shard < 0 || t.Shard >= len(in.files) {
			return nil, fmt.Errorf("convert: tensor %q: shard %d out of range", t.Name, t.Shard)
		}
		if t.Data == nil {
			return nil, fmt.Errorf("convert: tensor %q has no data reader", t.Name)
		}
		info := &infos[i]
		*info = safetensors.TensorInfo{Name: t.Name, DType: t.DType, Shape: t.Shape}
		if sz := t.DType.Size(); sz > 0 {
			info.End = info.NumElements() * int64(sz)
		}
		in.tensors = append(in.tensors, srcTensor{TensorInfo: info, shard: int32(t.Shard), ownDType: t.OwnDType || t.Verbatim, verbatim: t.Verbatim, input: int32(len(in.tensors))})
		in.readers = append(in.readers, t.Data)
	}
	return convertSource(ctx, start, s, in, ck.Path, dst)
}
