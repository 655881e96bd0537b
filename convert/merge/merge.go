package merge

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/convert/dequant"
	"github.com/qconv/qconv/formats/arch"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/procs"
)

// Output says what Merge writes.
type Output uint8

const (
	// OutputAuto writes what the base is: a dense checkpoint for a dense
	// base, and for a bitsandbytes 4-bit base a 4-bit one with the
	// base's quantization settings (quant type, block size, double
	// quantization, compute dtype, and which weights are 4-bit), as
	// PEFT's merge_and_unload of a 4-bit model leaves it.
	OutputAuto Output = iota
	// OutputDense writes a dense checkpoint.
	OutputDense
	// OutputQuantized writes a 4-bit checkpoint with Options.Convert's
	// quantization settings, byte-identical to convert.Convert of the
	// dense merge.
	OutputQuantized
)

// Options controls Merge.
type Options struct {
	// Convert holds the settings of the output side, as for
	// convert.Convert: DType (the dtype of the merged model; zero: the
	// base's config.json dtype, else the base tensors' common dtype),
	// Workers, MaxShardSize, Force, Restart, Part/Finalize, Progress, Log,
	// and for a 4-bit output the quantization settings. Dense is set by
	// Merge from Output.
	Convert convert.Options
	// Output selects a dense or 4-bit output (zero: OutputAuto).
	Output Output
}

// Summary reports what Merge did.
type Summary struct {
	*convert.Summary
	// Adapter is the adapter directory.
	Adapter string
	// Modules counts the LoRA modules merged (Embeddings of them are
	// embeddings), Replaced the tensors replaced whole (modules_to_save,
	// trained biases) and Biases the lora_B biases added.
	Modules, Embeddings, Replaced, Biases int
	// Quantized reports a 4-bit output, with these settings;
	// QuantizedBase a 4-bit base.
	Quantized, QuantizedBase bool
	QuantType                bnb.QuantType
	Blocksize                int
	DoubleQuant              bool
	// Requantized counts the 4-bit weights of the base that were merged
	// and quantized again as PEFT does (from their float32 sums; the
	// other 4-bit weights are copied unchanged). Zero unless the output
	// keeps the base's 4-bit settings (OutputAuto).
	Requantized int
	// ExactElements counts the merged elements whose delta needed exact
	// (math/big) arithmetic to be rounded correctly; see round.go.
	ExactElements int64
}

// Merge folds the LoRA adapter in the directory adapter into the base
// checkpoint at base (a .safetensors file or a directory, dense or
// bitsandbytes 4-bit) and writes the merged model to the directory dst,
// as PEFT's PeftModel.from_pretrained(base, adapter).merge_and_unload()
// followed by save_pretrained would, except that every merged element is
// correctly rounded (see round.go for what that means and how).
//
// It is convert's pipeline with a different reader: the merged tensors are
// computed a sub-chunk at a time as the pipeline reads them, so memory
// stays bounded as for convert, plus the LoRA factors of the few modules
// in use at a time (see the package documentation). Output layout,
// sharding, config.json, resume and partitioned runs are
// convert.ConvertSource's; the adapter's files are part of what resume
// checks.
func Merge(ctx context.Context, base, adapter, dst string, opts Options) (*Summary, error) {
	ck, err := checkpoint.Open(base)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	defer ck.Close()
	a, err := OpenAdapter(adapter, false)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	defer a.Close()
	pr, err := prepare(ck, a, opts)
	if err != nil {
		return nil, err
	}
	copts := opts.Convert
	copts.Dense = !pr.sum.Quantized
	if pr.sum.Quantized && opts.Output == OutputAuto {
		pr.applyBaseQuantization(&copts, ck)
	}
	if copts.DType == dtype.Invalid {
		copts.DType = pr.dtype
	}
	pr.sum.QuantType, pr.sum.Blocksize, pr.sum.DoubleQuant = copts.QuantType, copts.Blocksize, !copts.NoDoubleQuant
	if pr.sum.QuantType == 0 {
		pr.sum.QuantType = bnb.NF4
	}
	if pr.sum.Blocksize == 0 {
		pr.sum.Blocksize = convert.DefaultBlocksize
	}
	cs, err := convert.ConvertSource(ctx, pr.src, dst, copts)
	if err != nil {
		return nil, err
	}
	pr.sum.Summary = cs
	pr.sum.ExactElements = pr.exact.Load()
	return &pr.sum, nil
}

// A view is the base as the merge sees it: its tensors, the 4-bit weights
// dequantized, their quant-state companions left out.
type view struct {
	ck      *checkpoint.Checkpoint
	tensors []*baseTensor
	byName  map[string]*baseTensor
	weights []*dequant.Weight // the 4-bit weights, if any
	dense2D []string          // dense 2-D float ".weight" tensors
}

func newView(ck *checkpoint.Checkpoint) (*view, error) {
	ws, err := dequant.FindWeights(ck)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	v := &view{ck: ck, byName: map[string]*baseTensor{}, weights: ws}
	companion := map[string]bool{}
	packed := map[string]*dequant.Weight{}
	for _, w := range ws {
		packed[w.Name] = w
		for _, c := range w.Companions {
			companion[c] = true
		}
	}
	shardOf := map[*checkpoint.Shard]int{}
	for i, sh := range ck.Shards {
		shardOf[sh] = i
	}
	a := arch.Default().LookupConfig(ck.Config)
	for _, w := range ws {
		if _, transposed, err := dequant.SourceShape(a, w); err != nil || transposed {
			// Its dense form is the transpose of the packed order, which
			// a streaming reader cannot produce a sub-chunk at a time.
			return nil, fmt.Errorf("merge: %s: tensor %q is a 4-bit Conv1D weight, quantized transposed; qconv merge does not merge into 4-bit GPT-2 style bases: dequantize the base first (qconv dequant) and merge into the dense checkpoint", ck.Path, w.Name)
		}
	}
	for _, t := range ck.Tensors() {
		if companion[t.Name] {
			continue
		}
		bt := &baseTensor{name: t.Name, dtype: t.DType, shape: t.Shape, shard: shardOf[t.Shard], data: t.SectionReader(), path: t.Shard.Path, stored: t.Name}
		if w := packed[t.Name]; w != nil {
			bt.dtype, bt.shape, bt.packed, bt.weight = w.DType, slices.Clone(w.State.Shape), true, w
			bt.data = &dequantReader{w: w}
		} else if t.DType.IsFloat() && len(t.Shape) == 2 && strings.HasSuffix(t.Name, ".weight") {
			v.dense2D = append(v.dense2D, t.Name)
		}
		v.tensors = append(v.tensors, bt)
		v.byName[bt.name] = bt
	}
	return v, nil
}

// uint8Storage reports whether every 4-bit weight of the base stores its
// packed codes as uint8 (bnb_4bit_quant_storage="uint8", the default).
func (v *view) uint8Storage() bool {
	for _, w := range v.weights {
		if w.Packed.DType != dtype.U8 {
			return false
		}
	}
	return true
}

// verbatim returns the source tensors that copy the 4-bit weight bt and
// its quant-state companions unchanged, all in bt's shard so that they
// stay together.
func (v *view) verbatim(bt *baseTensor) []convert.SourceTensor {
	w := bt.weight
	out := []convert.SourceTensor{{Name: w.Name, DType: w.Packed.DType, Shape: w.Packed.Shape, Shard: bt.shard, Data: w.Packed.SectionReader(), Verbatim: true}}
	for _, c := range w.Companions {
		t, _ := v.ck.Tensor(c) // FindWeights found it there
		out = append(out, convert.SourceTensor{Name: t.Name, DType: t.DType, Shape: t.Shape, Shard: bt.shard, Data: t.SectionReader(), Verbatim: true})
	}
	return out
}

// A target is what the adapter does to one base tensor.
type target struct {
	whole *checkpoint.Tensor // replaces the base values
	mod   *Module            // its LoRA delta is added (a weight)
	bias  *Module            // its lora_B.bias is added (a bias)
}

// Check checks the adapter against the base checkpoint ck (dense or
// 4-bit) and returns every problem that makes the merge impossible: a
// LoRA module or whole tensor with no tensor of that name in the base, a
// shape that does not fit (lora_A/lora_B against the weight, with
// fan_in_fan_out and embeddings transposed), a lora_B.bias with no base
// bias. Errors name the adapter file, the module and the base tensor.
func Check(ck *checkpoint.Checkpoint, a *Adapter) []error {
	v, err := newView(ck)
	if err != nil {
		return []error{err}
	}
	_, errs := v.targets(a)
	return errs
}

// targets maps base tensor names to what the adapter does to them.
func (v *view) targets(a *Adapter) (map[string]*target, []error) {
	ts := map[string]*target{}
	get := func(name string) *target {
		t := ts[name]
		if t == nil {
			t = &target{}
			ts[name] = t
		}
		return t
	}
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("merge: %s: "+format, append([]any{a.Weights.Path}, args...)...))
	}
	path := v.ck.Path
	names := make([]string, 0, len(a.Whole))
	for name := range a.Whole {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t := a.Whole[name]
		tn := baseName(name)
		bt := v.byName[tn]
		switch {
		case bt == nil:
			fail("tensor %q replaces %q, which %s does not have (modules_to_save or a trained bias of another model?)", t.Name, tn, path)
		case !slices.Equal(t.Shape, bt.shape) || !floatDType(t.DType):
			fail("tensor %q is %v %s, but %s's %q is %v %s", t.Name, t.DType, shapeString(t.Shape), path, tn, bt.dtype, shapeString(bt.shape))
		default:
			tt := t
			get(tn).whole = &tt
		}
	}
	for _, m := range a.Modules {
		wname := m.Name + ".weight"
		bt := v.byName[wname]
		if bt == nil {
			fail("module %q has LoRA factors, but %s has no tensor %q (an adapter of another model?)", m.Name, path, wname)
			continue
		}
		if len(bt.shape) != 2 || !bt.dtype.IsFloat() {
			fail("module %q: %s's %q is %v %s, not a 2-D floating-point weight", m.Name, path, wname, bt.dtype, shapeString(bt.shape))
			continue
		}
		want := []int64{m.B.Shape[0], m.A.Shape[1]}
		layout := "[out, in] = [lora_B rows, lora_A columns]"
		if transposed(a, m) {
			want = []int64{m.A.Shape[1], m.B.Shape[0]}
			layout = "[in, out] = [lora_A columns, lora_B rows], for fan_in_fan_out"
			if m.Embedding {
				layout = "[num_embeddings, dim] = [lora_embedding_A columns, lora_embedding_B rows]"
			}
		}
		if !slices.Equal(bt.shape, want) {
			fail("module %q: %s is %s and %s is %s, so the weight should be %s (%s), but %s's %q is %s",
				m.Name, lastName(m.A.Name), shapeString(m.A.Shape), lastName(m.B.Name), shapeString(m.B.Shape), shapeString(want), layout, path, wname, shapeString(bt.shape))
			continue
		}
		get(wname).mod = m
		if m.Bias == nil {
			continue
		}
		bname := m.Name + ".bias"
		bb := v.byName[bname]
		switch {
		case bb == nil:
			// PEFT 0.21, lora.Linear.merge: "Impossible to merge LoRA
			// with `lora_bias=True` because the base layer has no bias."
			fail("module %q has %q (lora_bias=True), but %s has no %q to add it to (PEFT cannot merge this either)", m.Name, m.Bias.Name, path, bname)
		case len(bb.shape) != 1 || bb.shape[0] != m.Bias.Shape[0] || !bb.dtype.IsFloat():
			fail("tensor %q is %s, but %s's %q is %v %s", m.Bias.Name, shapeString(m.Bias.Shape), path, bname, bb.dtype, shapeString(bb.shape))
		default:
			get(bname).bias = m
		}
	}
	return ts, errs
}

// transposed reports whether module m's weight is stored [in, out]: an
// embedding (PEFT's Embedding.get_delta_weight transposes B @ A always) or
// a Conv1D layer of an adapter with fan_in_fan_out.
func transposed(a *Adapter, m *Module) bool { return m.Embedding || a.Config.FanInFanOut }

func lastName(name string) string {
	name = strings.TrimPrefix(name, keyPrefix)
	if i := strings.LastIndex(name, ".lora_"); i >= 0 {
		return name[i+1:]
	}
	return name
}

// prepared is a merge ready to run.
type prepared struct {
	src   *convert.Source
	sum   Summary
	dtype dtype.DType // the resolved output dtype (Invalid: each tensor's own)
	exact *atomic.Int64
	view  *view
}

// prepare checks the adapter against the base and builds the source the
// pipeline reads: the base's tensors, the merged ones computed on read.
func prepare(ck *checkpoint.Checkpoint, a *Adapter, opts Options) (*prepared, error) {
	v, err := newView(ck)
	if err != nil {
		return nil, err
	}
	ts, errs := v.targets(a)
	if len(errs) > 0 {
		if len(errs) > 1 {
			return nil, fmt.Errorf("%w (and %d more problems; qconv audit %s lists them all)", errs[0], len(errs)-1, a.Dir)
		}
		return nil, errs[0]
	}
	pr := &prepared{exact: new(atomic.Int64), view: v}
	sum := &pr.sum
	sum.Adapter = a.Dir
	sum.QuantizedBase = len(v.weights) > 0
	sum.Quantized = opts.Output == OutputQuantized || (opts.Output == OutputAuto && sum.QuantizedBase)

	// The config the output starts from: a 4-bit base's without its
	// quantization_config (a 4-bit output gets a new one).
	cfg := ck.Config
	if cfg.Has("quantization_config") {
		cfg = cfg.Clone()
		cfg.Delete("quantization_config")
	}

	// The output dtype of the merged tensors, resolved as convert
	// resolves the model dtype (and passed to it, so that both agree):
	// --dtype, else config.json's, else the one the floating-point
	// tensors share, else each tensor's own.
	out := opts.Convert.DType
	if out == dtype.Invalid {
		if d, ok := ck.ConfigDType(); ok && floatDType(d) {
			out = d
		}
	}
	if out == dtype.Invalid {
		for _, t := range v.tensors {
			if !t.dtype.IsFloat() {
				continue
			}
			if out == dtype.Invalid {
				out = t.dtype
			} else if out != t.dtype {
				out = dtype.Invalid
				break
			}
		}
		if !floatDType(out) {
			out = dtype.Invalid
		}
	}
	pr.dtype = out

	workers := opts.Convert.Workers
	if workers <= 0 {
		workers = procs.CPUs()
	}
	cache := newFactorCache(2*workers + 4)
	adDir, err := filepath.Abs(a.Dir)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	pr.src = &convert.Source{
		Checkpoint: ck,
		Config:     cfg,
		State: map[string]string{
			"merge-adapter": adDir,
			// round.go's definition and how a 4-bit base is requantized;
			// change it when either changes.
			"merge-numerics": "2",
		},
		Inputs: []string{filepath.Join(adDir, AdapterConfigName), filepath.Join(adDir, AdapterWeightsName)},
	}
	// A 4-bit output with the base's settings is what PEFT's merge of a
	// bitsandbytes model leaves (peft 0.21, lora/bnb.py Linear4bit.merge):
	// a weight no adapter changes keeps its packed bytes and quant state,
	// and a merged one is the float32 sum of the dequantized weight (in its
	// dtype) and the float32 delta, quantized as that float32 tensor, so
	// its quant state records dtype float32. That needs the base's packed
	// storage to be uint8, which is all convert writes; a base stored
	// otherwise is requantized whole, as with --quantize.
	asPEFT := pr.sum.Quantized && opts.Output == OutputAuto && v.uint8Storage()
	for _, bt := range v.tensors {
		st := convert.SourceTensor{Name: bt.name, DType: bt.dtype, Shape: bt.shape, Shard: bt.shard, Data: bt.data}
		t := ts[bt.name]
		if t == nil && asPEFT && bt.packed {
			pr.src.Tensors = append(pr.src.Tensors, v.verbatim(bt)...)
			continue
		}
		if t == nil {
			pr.src.Tensors = append(pr.src.Tensors, st)
			continue
		}
		mt := &mergedTensor{name: bt.name, src: bt.data, srcDType: bt.dtype, srcName: fmt.Sprintf("%s: tensor %q", bt.path, bt.stored), out: out, exact: pr.exact}
		if asPEFT && bt.packed {
			mt.out, st.OwnDType = dtype.F32, true
			sum.Requantized++
		}
		if w := t.whole; w != nil {
			mt.src, mt.srcDType, mt.srcName = w.SectionReader(), w.DType, fmt.Sprintf("%s: tensor %q", w.Shard.Path, w.Name)
			sum.Replaced++
		}
		if mt.out == dtype.Invalid {
			mt.out = bt.dtype
		}
		mt.rows, mt.cols = 1, bt.numElements()
		switch {
		case t.mod != nil:
			m, tr := t.mod, transposed(a, t.mod)
			mt.rows, mt.cols = bt.shape[0], bt.shape[1]
			mt.scaling = a.Config.Scaling(m.Name)
			mt.delta = &factorSource{key: m.Name, cache: cache, load: func() (*factors, error) { return loadFactors(m, tr) }}
			sum.Modules++
			if m.Embedding {
				sum.Embeddings++
			}
		case t.bias != nil:
			m := t.bias
			mt.scaling = a.Config.Scaling(m.Name)
			mt.delta = &factorSource{key: m.Name + "#bias", cache: cache, load: func() (*factors, error) { return biasFactors(*m.Bias) }}
			sum.Biases++
		}
		st.DType = mt.out
		st.Data = mt
		if mt.delta == nil && mt.out == mt.srcDType {
			st.Data = mt.src // a whole replacement already in the output dtype
		}
		pr.src.Tensors = append(pr.src.Tensors, st)
	}
	return pr, nil
}

// baseName maps the name of a whole tensor of the adapter to the base
// tensor it replaces: PEFT saves a targeted embedding's base weight as
// "<module>.base_layer.weight" (save_embedding_layers="auto") and the
// trained biases of adapted layers under "<module>.base_layer.bias" or
// "<module>.bias".
func baseName(name string) string {
	return strings.Replace(name, ".base_layer.", ".", 1)
}

// applyBaseQuantization sets the quantization settings of a 4-bit output
// from the 4-bit base: quant type, block size and double quantization
// from its first weight's quant state, the compute dtype from its
// quantization_config, and the selection: the base's 4-bit weights are
// quantized, its dense 2-D weights kept.
func (pr *prepared) applyBaseQuantization(o *convert.Options, ck *checkpoint.Checkpoint) {
	w := pr.view.weights[0]
	o.QuantType = w.State.QuantType
	o.Blocksize = w.State.Blocksize
	o.NoDoubleQuant = !w.State.DoubleQuant
	if s, ok := ck.Config.Get("quantization_config").Get("bnb_4bit_compute_dtype").AsString(); ok {
		if d, ok := dtype.FromTorchName(s); ok {
			o.ComputeDType = d
		}
	}
	o.Include, o.Skip = nil, nil
	for _, w := range pr.view.weights {
		o.Include = append(o.Include, w.Name)
	}
	o.Skip = append(o.Skip, pr.view.dense2D...)
}
