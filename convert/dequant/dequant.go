package dequant

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/convert/internal/jobs"
	"github.com/qconv/qconv/convert/internal/outdir"
	"github.com/qconv/qconv/convert/internal/transpose"
	"github.com/qconv/qconv/formats/arch"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/procs"
	"github.com/qconv/qconv/internal/pyjson"
)

// DefaultMaxShardSize is the largest output file, in bytes, before the
// output is split into shards: 50 GB, the default of transformers v5's
// save_pretrained.
const DefaultMaxShardSize = 50_000_000_000

// workKind is the kind of dequant's work directories (outdir.MkTemp).
const workKind = "dequant"

// DefaultJobElements is the number of weight elements one job handles.
// A job holds at most 14 bytes per element (packed codes, float32 values,
// output bytes, or the raw and cast bytes of a dense tensor), so at most
// Workers jobs of 1 Mi elements, about 14 MiB each, are in memory at once,
// plus the small quant-state tensors of the weights.
const DefaultJobElements = 1 << 20

// Options controls Dequantize. The zero value writes every weight in its
// quant state's dtype, leaves the other tensors as they are, uses every CPU
// and refuses a non-empty destination.
type Options struct {
	// DType, if set (F32, BF16 or F16), is the dtype of every output
	// floating-point tensor: dequantized weights and the dense tensors,
	// which are cast to it (round to nearest even). Zero keeps each
	// weight's quant-state dtype and leaves dense tensors unchanged.
	DType dtype.DType
	// Workers is the number of goroutines working in parallel. Zero means
	// procs.CPUs() (the CPUs the process may use); 1 runs every job in
	// order on the calling goroutine. The output does not depend on it.
	Workers int
	// MaxShardSize is the largest output file in bytes, as transformers'
	// max_shard_size. Zero means DefaultMaxShardSize.
	MaxShardSize int64
	// JobElements is the number of elements per job (rounded, for a
	// weight, to whole groups of 256 blocks). Zero means
	// DefaultJobElements.
	JobElements int
	// Force allows a non-empty destination directory: the output files
	// replace files of the same names there, and stale weight files
	// (model.safetensors, model-NNNNN-of-NNNNN.safetensors, the index) are
	// removed. Without it a non-empty destination is an error.
	Force bool
	// Progress, if not nil, is called after each job with the output
	// bytes written so far and in total, from worker goroutines (it must
	// be safe for concurrent use, and quick).
	Progress func(done, total int64)

	// failAfter, in tests, makes the job of that (1-based) number fail.
	failAfter int64
}

// Summary reports what Dequantize did.
type Summary struct {
	Src, Dst string
	// DType is the dtype recorded in the output config.json (the output
	// dtype of the weights), or Invalid when weights have mixed dtypes.
	DType dtype.DType
	// Weights counts the dequantized weights, Kept the other tensors.
	Weights, Kept int
	// InputBytes and OutputBytes are the sizes of the weight files.
	InputBytes, OutputBytes int64
	// Files are the output weight files; Index is the index file, or ""
	// for a single file.
	Files []string
	Index string
	// Copied lists the other files copied unchanged.
	Copied []string
	// Seconds is the wall-clock time.
	Seconds float64
}

// Dequantize writes to the directory dst a dense copy of the bitsandbytes
// 4-bit checkpoint at src (a .safetensors file, or a directory holding
// model.safetensors or an index and its shards). See the package
// documentation for what the output holds. The output is built in a
// temporary directory beside dst and renamed into place at the end; on any
// error, or when ctx is cancelled, dst is left as it was. dst must not
// exist or be an empty directory, unless Options.Force.
func Dequantize(ctx context.Context, src, dst string, opts Options) (*Summary, error) {
	start := time.Now()
	if opts.DType != dtype.Invalid && opts.DType != dtype.F32 && opts.DType != dtype.BF16 && opts.DType != dtype.F16 {
		return nil, fmt.Errorf("dequant: dtype %v is not one of F32, BF16, F16", opts.DType)
	}
	if opts.Workers < 0 || opts.MaxShardSize < 0 || opts.JobElements < 0 {
		return nil, fmt.Errorf("dequant: negative option")
	}
	ck, err := checkpoint.Open(src)
	if err != nil {
		return nil, fmt.Errorf("dequant: %w", err)
	}
	defer ck.Close()
	if err := outdir.Check(ck, dst, opts.Force); err != nil {
		return nil, fmt.Errorf("dequant: %w", err)
	}
	p, err := newPlan(ck, opts)
	if err != nil {
		return nil, err
	}
	// A dequantization into dst that was killed left its work directory
	// beside dst, or was killed while installing it: finish the install,
	// remove the rest.
	iopts := outdir.InstallOptions{Force: opts.Force}
	finished, err := outdir.Recover(dst, "", workKind, iopts)
	if err == nil && !finished {
		finished, err = outdir.CleanTemps(dst, workKind, iopts)
	}
	if err != nil {
		return nil, fmt.Errorf("dequant: finishing an interrupted install into %s: %w", dst, err)
	}
	if finished {
		return nil, fmt.Errorf("dequant: finished the install of an earlier dequantization into %s, which was interrupted; run again with --force to redo it", dst)
	}
	work, err := outdir.MkTemp(dst, workKind)
	if err != nil {
		return nil, fmt.Errorf("dequant: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			work.RemoveAll()
		}
	}()
	sum := &Summary{Src: src, Dst: dst, DType: p.dtype, Weights: p.weights, Kept: len(p.items) - p.weights}
	for _, sh := range ck.Shards {
		sum.InputBytes += sh.Size()
	}
	if err := p.write(ctx, work, sum); err != nil {
		return nil, err
	}
	if err := p.finish(ctx, ck, work, sum); err != nil {
		return nil, fmt.Errorf("dequant: %w", err)
	}
	ok = true // Install closes work, and a failed install is finished by a rerun
	if err := outdir.Install(work, dst, iopts); err != nil {
		return nil, fmt.Errorf("dequant: installing the output in %s: %w (the next dequant into %s finishes it)", dst, err, dst)
	}
	sum.Seconds = time.Since(start).Seconds()
	return sum, nil
}

// An item is one output tensor.
type item struct {
	name   string
	dtype  dtype.DType
	shape  []int64
	n      int64             // elements
	size   int64             // output bytes
	w      *Weight           // a dequantized weight, or nil
	src    checkpoint.Tensor // the dense source tensor (w == nil)
	shard  int               // ordinal of the source shard, for the state-dict order
	file   int               // output file
	offset int64             // absolute offset of its data in the file
	// transposed: w's values, in its quant state's [out, in] order, are
	// written as the [in, out] transpose the source stored (a GPT-2 style
	// Conv1D weight; shape is [in, out]).
	transposed bool
}

type plan struct {
	opts     Options
	ck       *checkpoint.Checkpoint
	items    []*item
	files    [][]*item // per output file, in state-dict order
	names    []string  // output file names
	weights  int
	dtype    dtype.DType // config dtype
	jobElems int64
	arch     *arch.Arch // the table's entry for the architecture, or nil
}

// newPlan decides the output tensors, their dtypes and files.
func newPlan(ck *checkpoint.Checkpoint, opts Options) (*plan, error) {
	a, err := Architecture(ck)
	if err != nil {
		return nil, fmt.Errorf("dequant: %w", err)
	}
	ws, err := FindWeights(ck)
	if err != nil {
		return nil, err
	}
	if len(ws) == 0 {
		return nil, fmt.Errorf("dequant: %s: no bitsandbytes 4-bit weights (no tensor has a quant_state.bitsandbytes__nf4 or __fp4 sibling)", ck.Path)
	}
	p := &plan{opts: opts, ck: ck, weights: len(ws), jobElems: int64(opts.JobElements), arch: a}
	if p.jobElems == 0 {
		p.jobElems = DefaultJobElements
	}
	companion := map[string]bool{}
	byName := map[string]*Weight{}
	for _, w := range ws {
		byName[w.Name] = w
		for _, c := range w.Companions {
			companion[c] = true
		}
	}
	shardOrd := map[*checkpoint.Shard]int{}
	for i, sh := range ck.Shards {
		shardOrd[sh] = i
	}
	for _, t := range ck.Tensors() {
		if companion[t.Name] {
			continue
		}
		if strings.Contains(t.Name, ".quant_state.bitsandbytes__") {
			return nil, fmt.Errorf("dequant: %s: tensor %q: a quant state without its weight", t.Shard.Path, t.Name)
		}
		it := &item{name: t.Name, shard: shardOrd[t.Shard]}
		if w := byName[t.Name]; w != nil {
			shape, transposed, err := SourceShape(a, w)
			if err != nil {
				return nil, fmt.Errorf("dequant: %s: %w", ck.Path, err)
			}
			it.w, it.dtype, it.shape, it.n, it.transposed = w, w.DType, shape, w.NumElements(), transposed
			if opts.DType != dtype.Invalid {
				it.dtype = opts.DType
			}
		} else {
			it.src, it.dtype, it.shape, it.n = t, t.DType, slices.Clone(t.Shape), t.NumElements()
			if opts.DType != dtype.Invalid && t.DType.IsFloat() {
				it.dtype = opts.DType
			}
		}
		it.size = it.n * int64(it.dtype.Size())
		if it.dtype.Size() == 0 {
			return nil, fmt.Errorf("dequant: %s: tensor %q: unsupported dtype %v", t.Shard.Path, t.Name, t.DType)
		}
		p.items = append(p.items, it)
	}

	// The config dtype: the one the weights come out in.
	p.dtype = opts.DType
	if p.dtype == dtype.Invalid {
		for _, it := range p.items {
			if it.w == nil {
				continue
			}
			if p.dtype == dtype.Invalid {
				p.dtype = it.dtype
			} else if p.dtype != it.dtype {
				p.dtype = dtype.Invalid
				break
			}
		}
	}

	// Shards as transformers' save_pretrained makes them: tensors in
	// state-dict order, split as outdir.Split says.
	slices.SortStableFunc(p.items, func(a, b *item) int {
		return cmp.Or(cmp.Compare(a.shard, b.shard), outdir.StateDictCompare(a.name, b.name))
	})
	maxShard := opts.MaxShardSize
	if maxShard == 0 {
		maxShard = DefaultMaxShardSize
	}
	sizes := make([]int64, len(p.items))
	for i, it := range p.items {
		sizes[i] = it.size
	}
	shards := outdir.Split(sizes, maxShard)
	for i, sh := range shards {
		var f []*item
		for _, k := range sh {
			f = append(f, p.items[k])
			p.items[k].file = i
		}
		p.files = append(p.files, f)
		p.names = append(p.names, outdir.FileName(i, len(shards)))
	}
	return p, nil
}

// A job writes elements [start, start+n) of one item (for a weight, a
// run of whole groups of 256 blocks).
type job struct {
	it       *item
	start, n int64
}

// scratch is one worker's buffers.
type scratch struct {
	blocks Blocks
	vals   []float32
	raw    []byte
	out    []byte
}

func newScratch() *scratch { return new(scratch) }

// write creates the output weight files in work and fills them.
func (p *plan) write(ctx context.Context, work *outdir.Dir, sum *Summary) error {
	files := make([]*os.File, len(p.files))
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}()
	var total int64
	for i, items := range p.files {
		specs := make([]safetensors.TensorSpec, len(items))
		byName := map[string]*item{}
		for j, it := range items {
			specs[j] = safetensors.TensorSpec{Name: it.name, DType: it.dtype, Shape: it.shape}
			byName[it.name] = it
		}
		layout, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
		if err != nil {
			return fmt.Errorf("dequant: %s: %w", p.names[i], err)
		}
		for _, t := range layout.Tensors {
			byName[t.Name].offset = layout.DataOffset() + t.Begin
		}
		f, err := work.Create(p.names[i])
		if err != nil {
			return fmt.Errorf("dequant: %w", err)
		}
		files[i] = f
		if _, err := f.WriteAt(layout.Header, 0); err != nil {
			return fmt.Errorf("dequant: %s: %w", p.names[i], err)
		}
		if err := f.Truncate(layout.FileSize()); err != nil {
			return fmt.Errorf("dequant: %s: %w", p.names[i], err)
		}
		total += layout.DataSize
	}

	var js []job
	for _, it := range p.items {
		per := p.jobElems
		if it.w != nil {
			unit := int64(it.w.State.Blocksize) * bnb.NestedBlocksize
			per = max(unit, per/unit*unit)
		}
		for s := int64(0); s < it.n; s += per {
			js = append(js, job{it, s, min(per, it.n-s)})
		}
	}
	workers := p.opts.Workers
	if workers <= 0 {
		workers = procs.CPUs()
	}
	var done, count atomic.Int64
	err := jobs.Run(ctx, workers, 2*workers, slices.Values(js), newScratch, func(_ context.Context, s *scratch, j job) error {
		if p.opts.failAfter > 0 && count.Add(1) == p.opts.failAfter {
			return fmt.Errorf("dequant: injected failure")
		}
		b, err := p.fill(s, j)
		if err != nil {
			return err
		}
		it := j.it
		var dst io.WriterAt = files[it.file]
		at := it.offset + j.start*int64(it.dtype.Size())
		if it.transposed {
			dst = &transpose.Writer{Dst: io.NewOffsetWriter(files[it.file], it.offset),
				Shape: transpose.Shape{Rows: it.shape[0], Cols: it.shape[1], Size: int64(it.dtype.Size())}}
			at -= it.offset
		}
		if _, err := dst.WriteAt(b, at); err != nil {
			return fmt.Errorf("dequant: %s: writing tensor %q: %w", p.names[it.file], it.name, err)
		}
		if p.opts.Progress != nil {
			p.opts.Progress(done.Add(int64(len(b))), total)
		}
		return nil
	})
	if err == context.Canceled || err == context.DeadlineExceeded {
		return fmt.Errorf("dequant: interrupted; no output written: %w", err)
	}
	if err != nil {
		return err
	}
	for i, f := range files {
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		files[i] = nil
		if err != nil {
			return fmt.Errorf("dequant: %s: %w", p.names[i], err)
		}
	}
	return nil
}

// fill computes the output bytes of a job.
func (p *plan) fill(s *scratch, j job) ([]byte, error) {
	it := j.it
	size := it.dtype.Size()
	s.out = jobs.Grow(s.out, int(j.n)*size)
	if w := it.w; w != nil {
		bs := int64(w.State.Blocksize)
		if err := w.ReadBlocks(&s.blocks, j.start/bs, bnb.NumBlocks(j.n, int(bs))); err != nil {
			return nil, err
		}
		s.vals = jobs.Grow(s.vals, int(j.n))
		w.Dequantize(s.vals, &s.blocks)
		cast.Encode(s.out, s.vals, it.dtype)
		return s.out, nil
	}
	from := it.src.DType
	fsz := int64(from.Size())
	if from == it.dtype {
		if err := readAt(it.src, s.out, j.start*fsz); err != nil {
			return nil, err
		}
		return s.out, nil
	}
	s.raw = jobs.Grow(s.raw, int(j.n*fsz))
	if err := readAt(it.src, s.raw, j.start*fsz); err != nil {
		return nil, err
	}
	s.vals = jobs.Grow(s.vals, int(j.n))
	cast.Decode(s.vals, s.raw, from, from)
	cast.Encode(s.out, s.vals, it.dtype)
	return s.out, nil
}

// finish checks the weight files, writes the index and config.json, and
// copies the other files of the source directory.
func (p *plan) finish(ctx context.Context, ck *checkpoint.Checkpoint, work *outdir.Dir, sum *Summary) error {
	var params int64
	for _, it := range p.items {
		params += it.n
	}
	sum.Files = p.names
	var err error
	if sum.OutputBytes, sum.Index, err = outdir.WriteIndex(work, p.names, params); err != nil {
		return err
	}
	if ck.Config != nil {
		if err := work.WriteFile(checkpoint.ConfigFileName, ConfigJSON(ck.Config, p.dtype, p.arch)); err != nil {
			return err
		}
	}
	sum.Copied, _, err = outdir.CopyAux(ctx, ck, work)
	return err
}

// ConfigJSON returns the bytes of the dequantized model's config.json:
// cfg without "quantization_config", with "dtype" (and the legacy
// "torch_dtype", if present) set to d unless d is Invalid, written as
// transformers writes it (json.dumps(indent=2, sort_keys=True) and a
// newline). The "dtype" of the sub-configs into which transformers writes
// the model dtype (a's SubconfigDType, for vision-language models; a may
// be nil) is set to d too, where the sub-config has one.
func ConfigJSON(cfg *pyjson.Value, d dtype.DType, a *arch.Arch) []byte {
	out := cfg.Clone()
	out.Delete("quantization_config")
	if name := d.TorchName(); name != "" {
		out.Set("dtype", pyjson.String(name))
		if out.Has("torch_dtype") {
			out.Set("torch_dtype", pyjson.String(name))
		}
		if a != nil {
			for _, path := range a.SubconfigDType {
				sub := out
				for _, k := range strings.Split(path, ".") {
					sub = sub.Get(k)
				}
				if sub.Kind() == pyjson.KindObject && sub.Has("dtype") {
					sub.Set("dtype", pyjson.String(name))
				}
			}
		}
	}
	return append(out.MarshalIndentSorted(), '\n')
}
