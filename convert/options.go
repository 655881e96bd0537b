package convert

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/procs"
)

// DefaultMaxShardSize is the largest output file, in bytes, before the
// output is split into shards: 50 GB, the default of transformers v5's
// save_pretrained (v4 used 5 GB). Small models come out as one
// model.safetensors.
const DefaultMaxShardSize = 50_000_000_000

// DefaultBlocksize is the 4-bit block size transformers always uses.
const DefaultBlocksize = 64

// DefaultJobElements is the number of tensor elements in one job: a job
// reads at most this many elements, and for a quantized tensor covers a
// whole number of double-quantization blocks (256 × blocksize elements,
// at most 1 Mi for blocksize 4096).
const DefaultJobElements = 1 << 20

// Options controls a conversion. The zero value converts like transformers
// with BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
// bnb_4bit_use_double_quant=True) and dtype "auto", on all CPUs.
type Options struct {
	// QuantType is NF4 or FP4. Zero means NF4.
	QuantType bnb.QuantType
	// Blocksize is the 4-bit block size, a power of two from 32 to 4096.
	// Zero means DefaultBlocksize (64).
	Blocksize int
	// NoDoubleQuant turns double quantization of the absmax statistics
	// off (--double-quant=false). The zero value keeps it on.
	NoDoubleQuant bool
	// DType is the dtype the model is loaded in, as transformers'
	// from_pretrained(dtype=...): kept floating-point tensors are stored
	// in it, and weights are rounded to it before they are quantized. It
	// must be F32, BF16 or F16; zero (dtype.Invalid) means "auto":
	// config.json's "dtype" (or "torch_dtype") if set, else the dtype the
	// floating-point tensors share, else each tensor's own dtype.
	DType dtype.DType
	// ComputeDType is written to bnb_4bit_compute_dtype. Zero means the
	// resolved DType (float32 when tensors keep mixed dtypes).
	ComputeDType dtype.DType
	// Skip lists globs (path.Match syntax) of tensors to keep dense even
	// if they would be quantized. Include lists globs of floating-point
	// tensors to quantize whatever their shape and name. A glob matches a
	// tensor if it matches its full name ("model.layers.0.mlp.up_proj.weight")
	// or its module name (the name without its last component,
	// "model.layers.0.mlp.up_proj"). '*' matches any run of characters,
	// dots included. Skip wins over Include.
	Skip, Include []string
	// Workers is the number of goroutines that quantize in parallel. Zero
	// means procs.CPUs() (the CPUs the process may use); 1 runs every job
	// in order on the calling goroutine (the reference path).
	Workers int
	// MaxShardSize is the largest output shard in bytes, as transformers'
	// max_shard_size; a tensor larger than it gets a shard of its own.
	// Zero means DefaultMaxShardSize.
	MaxShardSize int64
	// AllowNonFinite quantizes weights that hold NaN or ±Inf (after the
	// cast to DType) instead of failing.
	AllowNonFinite bool
	// Force allows a non-empty destination directory: the output files
	// replace files of the same names there, and stale weight files
	// (model.safetensors, model-NNNNN-of-NNNNN.safetensors, the index) are
	// removed. Without it a non-empty destination is an error.
	Force bool
	// Part converts only one part of the output files, for a conversion
	// split across processes or machines (see Part); Finalize then
	// completes it. The zero value converts everything and finalizes.
	Part Part
	// Finalize converts nothing: it checks that every output file of the
	// plan is complete in the work directory (written by the parts of a
	// partitioned conversion, with the same options) and finishes the
	// output (index, config.json, copied files) into dst.
	Finalize bool
	// Restart discards the partial output of an earlier, interrupted
	// conversion to the same destination instead of continuing it, also
	// when it was made with other options or from a changed source.
	Restart bool
	// Progress, if not nil, is called after each job with the number of
	// input bytes converted so far and in total (of the output files this
	// run writes). Each input byte counts once: the double-quant statistics
	// pass, which reads the weights ahead of their quantization, is not
	// counted again.
	// It is called from worker goroutines, possibly concurrently, and must
	// be safe for that and quick.
	Progress func(done, total int64)
	// TensorDone, if not nil, is called once the output tensors made of a
	// source tensor are written, with its position i (0-based) among the
	// plan's n tensors (Plan.Tensors) and what became of it. Calls come in
	// plan order (a tensor is reported once it and all before it are
	// written), one at a time, from worker goroutines; not for the tensors
	// of other parts or of output files an earlier run finished.
	TensorDone func(i, n int, t TensorPlan)
	// Log receives notes for the user (files not copied, for example).
	// Nil discards them.
	Log io.Writer
	// Dense writes a dense checkpoint instead of a 4-bit one: every
	// tensor is kept (floating-point ones in the model dtype, as DType
	// says), config.json gets no quantization_config (an input's is
	// removed), and inputs that convert refuses to quantize (GPT-2
	// style Conv1D models, an already quantized config) are allowed.
	// It is the output side of qconv merge (see ConvertSource); for a
	// plain checkpoint it is a dtype cast and reshard.
	Dense bool

	// jobElements overrides DefaultJobElements (tests).
	jobElements int
	// hooks injects failures (tests).
	hooks *hooks
}

// settings are Options with every default filled in and checked.
type settings struct {
	quant        bnb.QuantType
	blocksize    int
	doubleQuant  bool
	dtype        dtype.DType // Invalid: auto
	computeDType dtype.DType // Invalid: follow the resolved dtype
	skip         []string
	include      []string
	workers      int
	maxShard     int64
	allowNonFin  bool
	force        bool
	part         Part
	finalize     bool
	restart      bool
	jobElems     int
	progress     func(done, total int64)
	tensorDone   func(i, n int, t TensorPlan)
	log          io.Writer
	hooks        *hooks
	dense        bool
}

func (o *Options) settings() (*settings, error) {
	s := &settings{
		quant:        o.QuantType,
		blocksize:    o.Blocksize,
		doubleQuant:  !o.NoDoubleQuant,
		dtype:        o.DType,
		computeDType: o.ComputeDType,
		skip:         o.Skip,
		include:      o.Include,
		workers:      o.Workers,
		maxShard:     o.MaxShardSize,
		allowNonFin:  o.AllowNonFinite,
		force:        o.Force,
		part:         o.Part,
		finalize:     o.Finalize,
		restart:      o.Restart,
		jobElems:     o.jobElements,
		progress:     o.Progress,
		tensorDone:   o.TensorDone,
		log:          o.Log,
		hooks:        o.hooks,
		dense:        o.Dense,
	}
	if s.quant == 0 {
		s.quant = bnb.NF4
	}
	if !s.quant.Valid() {
		return nil, fmt.Errorf("convert: invalid quant type %v", s.quant)
	}
	if s.blocksize == 0 {
		s.blocksize = DefaultBlocksize
	}
	if !bnb.ValidBlocksize(s.blocksize) {
		return nil, fmt.Errorf("convert: invalid blocksize %d (want a power of two from 32 to 4096)", s.blocksize)
	}
	if s.dtype != dtype.Invalid && !modelDType(s.dtype) {
		return nil, fmt.Errorf("convert: dtype %v is not one of F32, BF16, F16", s.dtype)
	}
	if s.computeDType != dtype.Invalid && !modelDType(s.computeDType) {
		return nil, fmt.Errorf("convert: compute dtype %v is not one of F32, BF16, F16", s.computeDType)
	}
	for _, g := range append(append([]string(nil), s.skip...), s.include...) {
		if err := checkGlob(g); err != nil {
			return nil, err
		}
	}
	if s.workers < 0 {
		return nil, fmt.Errorf("convert: invalid number of workers %d", s.workers)
	}
	if s.workers == 0 {
		s.workers = procs.CPUs()
	}
	if s.maxShard < 0 {
		return nil, fmt.Errorf("convert: invalid max shard size %d", s.maxShard)
	}
	if s.maxShard == 0 {
		s.maxShard = DefaultMaxShardSize
	}
	if s.jobElems == 0 {
		// Keep the input buffers of all workers under 64 MiB.
		s.jobElems = DefaultJobElements
		for s.jobElems*4*s.workers > 64<<20 && s.jobElems > 1<<16 {
			s.jobElems /= 2
		}
	}
	if err := s.part.check(); err != nil {
		return nil, err
	}
	// A quantization job covers whole nested blocks, so that the codes of
	// its absmax values depend on nothing outside it but the offset.
	unit := s.blocksize * bnb.NestedBlocksize
	if s.jobElems%unit != 0 && s.jobElems > unit {
		s.jobElems -= s.jobElems % unit
	}
	if s.log == nil {
		s.log = io.Discard
	}
	return s, nil
}

// quantJobElems is the number of elements of a quantization job: a whole
// number of nested blocks (256 4-bit blocks), at least one.
func (s *settings) quantJobElems() int64 {
	unit := int64(s.blocksize) * bnb.NestedBlocksize
	n := int64(s.jobElems) / unit * unit
	return max(n, unit)
}

// modelDType reports whether d can be the dtype a model is loaded in.
func modelDType(d dtype.DType) bool { return d == dtype.F32 || d == dtype.BF16 || d == dtype.F16 }

// ParseDType parses a --dtype or --compute-dtype value: "bf16", "f16",
// "f32", the torch names "bfloat16", "float16", "float32" (optionally with
// a "torch." prefix), or the safetensors names "BF16", "F16", "F32".
// "auto" and "" give dtype.Invalid, meaning auto.
func ParseDType(s string) (dtype.DType, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return dtype.Invalid, nil
	case "bf16":
		return dtype.BF16, nil
	case "f16", "fp16":
		return dtype.F16, nil
	case "f32", "fp32":
		return dtype.F32, nil
	}
	if d, ok := dtype.FromTorchName(s); ok && modelDType(d) {
		return d, nil
	}
	if d, ok := dtype.Parse(s); ok && modelDType(d) {
		return d, nil
	}
	return dtype.Invalid, fmt.Errorf("convert: unknown dtype %q (want auto, bf16, f16 or f32)", s)
}

// ParseSize parses a shard size as transformers' max_shard_size does
// ("5GB", "200KB", "50GB": decimal units KB, MB, GB, TB = 10^3…10^12,
// a fractional number allowed) and also accepts binary units (KiB, MiB,
// GiB, TiB = 2^10…2^40), a plain "B" suffix, and a bare number of bytes.
// Units are case-insensitive.
func ParseSize(s string) (int64, error) {
	str := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   float64
	}{
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
		{"b", 1},
	}
	lower := strings.ToLower(str)
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(lower, u.suffix) {
			mult = u.mult
			str = strings.TrimSpace(str[:len(str)-len(u.suffix)])
			break
		}
	}
	v, err := strconv.ParseFloat(str, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("convert: invalid size %q (want for example 5GB, 200MB, 512MiB)", s)
	}
	n := v * mult
	if n >= math.MaxInt64 {
		return 0, fmt.Errorf("convert: size %q is too large", s)
	}
	if n < 1 {
		return 0, fmt.Errorf("convert: size %q is less than one byte", s)
	}
	return int64(n), nil // truncated like Python's int(value * multiplier)
}
