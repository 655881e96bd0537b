package convert

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/qconv/qconv/convert/internal/outdir"
	"github.com/qconv/qconv/formats/arch"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/pyjson"
)

// A srcTensor is a tensor of the source checkpoint as the plan sees it:
// its header entry (shared with the checkpoint's, not copied: 24 bytes a
// tensor instead of 88) and the ordinal of the shard file that holds it.
type srcTensor struct {
	*safetensors.TensorInfo
	shard int32 // index into Plan.srcFiles
	input int32 // index in source.tensors (and its readers)
	// ownDType keeps the tensor in its own dtype whatever the model
	// dtype (SourceTensor.OwnDType).
	ownDType bool
	// verbatim copies the tensor unchanged (SourceTensor.Verbatim).
	verbatim bool
}

// orderKey is the name and rank by which a source tensor is placed in
// state-dict order: its own name, except that a verbatim quant-state
// companion sorts as its weight, after it, in the order addEntries gives
// a freshly quantized weight's entries.
func (t *srcTensor) orderKey() (string, entryKind) {
	if !t.verbatim {
		return t.Name, entryData
	}
	if w, ok := strings.CutSuffix(t.Name, ".absmax"); ok && !strings.HasSuffix(w, ".nested") {
		return w, entryAbsmax
	}
	for _, c := range []struct {
		suffix string
		kind   entryKind
	}{{".nested_absmax", entryNestedAbsmax}, {".nested_quant_map", entryNestedQuantMap}, {".quant_map", entryQuantMap}} {
		if w, ok := strings.CutSuffix(t.Name, c.suffix); ok {
			return w, c.kind
		}
	}
	if i := strings.LastIndex(t.Name, ".quant_state."); i > 0 {
		return t.Name[:i], entryQuantState
	}
	return t.Name, entryData
}

// entryKind says what one output tensor holds.
type entryKind uint8

const (
	entryData           entryKind = iota // a kept tensor, or the packed 4-bit weight
	entryAbsmax                          // "<w>.absmax": U8 codes (double quant) or F32
	entryQuantMap                        // "<w>.quant_map"
	entryNestedAbsmax                    // "<w>.nested_absmax"
	entryNestedQuantMap                  // "<w>.nested_quant_map"
	entryQuantState                      // "<w>.quant_state.bitsandbytes__<type>"
)

// An entry is one tensor of the output: what it holds, its dtype, and
// which output file holds it. Its name and shape follow from its item
// (Plan.entryName, Plan.entryShape), so an entry is 8 bytes.
type entry struct {
	file  int32 // index into Plan.Files
	kind  entryKind
	dtype dtype.DType
}

// An item is one source tensor and what becomes of it.
type item struct {
	src *srcTensor
	// reason says why the tensor is quantized or kept (formats/arch's
	// Reason constants).
	reason  string
	entries []entry // in state-dict order
	index   int     // position in Plan.items
	// first is the number of entries of the items before this one: entry
	// j of the item is the plan's entry first+j (the runner's offsets).
	first int32
	// qi numbers the items that are quantized (0, 1, ...; -1 for the
	// others): the runner keeps per-weight state by it.
	qi       int32
	quantize bool
	// transposed: a GPT-2 style Conv1D weight, stored [in, out], that is
	// quantized as its [out, in] transpose (the quant state's shape).
	transposed bool
	// dtype is the dtype of the output tensor for a kept floating-point
	// tensor, and the dtype the weight is rounded to before it is
	// quantized (the quant state's "dtype") for a quantized one. Kept
	// non-float tensors keep their dtype.
	dtype dtype.DType
}

func (it *item) numElements() int64 { return it.src.NumElements() }

// logicalShape is the shape of the weight bitsandbytes quantizes: the
// source shape, transposed for a Conv1D weight.
func (it *item) logicalShape() []int64 {
	sh := slices.Clone(it.src.Shape)
	if it.transposed {
		slices.Reverse(sh)
	}
	return sh
}

// numBlocks is the number of 4-bit blocks of a quantized item.
func (it *item) numBlocks(blocksize int) int64 { return bnb.NumBlocks(it.numElements(), blocksize) }

// entry returns the item's entry of the given kind, or nil.
func (it *item) entry(k entryKind) *entry {
	for i := range it.entries {
		if it.entries[i].kind == k {
			return &it.entries[i]
		}
	}
	return nil
}

// A FilePlan is one output weight file.
type FilePlan struct {
	// Name is the file name: "model.safetensors", or
	// "model-00001-of-00003.safetensors" for a sharded output.
	Name string

	entries []entryRef // the file's output tensors, in state-dict order

}

// An entryRef names entry number entry of item number item.
type entryRef struct{ item, entry int32 }

// A Plan is everything about a conversion that follows from the source's
// headers and config.json and the options alone, before any tensor data
// is read: which tensors are quantized, the names, dtypes and shapes of the
// output tensors, which output file holds each and in what order.
//
// The one thing it cannot know is the length of each double-quantized
// weight's quant-state JSON, which prints the float32 mean of the weight's
// absmax values ("nested_offset") in Python's shortest repr; that decides
// the byte offsets inside a file. Files are therefore laid out (see
// runner.layout) once a statistics pass has computed those means. To choose
// shard boundaries without the data, the plan counts each such JSON at its
// largest possible length; transformers counts the actual length, so a
// shard boundary that falls within a few bytes per quantized tensor of
// the limit can differ (no golden sharded 4-bit output exists to check).
type Plan struct {
	s *settings

	// ModelDType is the resolved dtype of the model (dtype.Invalid when
	// tensors keep their own mixed dtypes).
	ModelDType dtype.DType
	// ComputeDType is written to bnb_4bit_compute_dtype.
	ComputeDType dtype.DType
	// Files are the output weight files, in order.
	Files []FilePlan
	// TotalParameters is transformers' num_parameters() of the quantized
	// model: the element count of kept tensors plus, for each 4-bit
	// weight, twice its packed byte count.
	TotalParameters int64
	// SkipModules is llm_int8_skip_modules: nil (written as null) when the
	// selection is transformers' default.
	SkipModules []string
	// Quantized and Kept count source tensors.
	Quantized, Kept int
	// Arch is the architecture in formats/arch's table, or nil when the
	// table does not know it (name rules decided; see Warnings).
	Arch *arch.Arch
	// Warnings are things the user should know about the plan (an
	// architecture the table does not know, globs that match nothing).
	Warnings []string
	// InputBytes is the size of the source weight files (set by PlanOnly
	// and Convert).
	InputBytes int64

	items       []*item
	numQuantize int      // items with quantize set
	srcFiles    []string // source shard names, by ordinal
}

// Sharded reports whether the output has more than one weight file (and
// so a model.safetensors.index.json).
func (p *Plan) Sharded() bool { return len(p.Files) > 1 }

// maxPyFloatLen is the longest Python repr of a float32 widened to a
// double: a sign, 17 significant digits, a point and an exponent
// ("-1.2345678901234567e-38" is 23 bytes).
const maxPyFloatLen = 24

// quantState returns the quant state of a quantized item with the given
// nested offset (ignored without double quantization).
func (p *Plan) quantState(it *item, offset float32) bnb.QuantState {
	st := bnb.QuantState{
		QuantType: p.s.quant,
		Blocksize: p.s.blocksize,
		DType:     it.dtype.TorchName(),
		Shape:     it.logicalShape(),
	}
	if p.s.doubleQuant {
		st.DoubleQuant = true
		st.NestedBlocksize = bnb.NestedBlocksize
		st.NestedDType = "float32"
		st.NestedOffset = offset
	}
	return st
}

// maxQuantStateLen is the length of the quant-state JSON of it, exact
// without double quantization and an upper bound with it.
func (p *Plan) maxQuantStateLen(it *item) int64 {
	n := int64(len(p.quantState(it, 0).MarshalPython()))
	if p.s.doubleQuant {
		n += maxPyFloatLen - int64(len("0.0"))
	}
	return n
}

// configDType returns the dtype recorded in config.json ("dtype", else
// "torch_dtype"), or Invalid.
func configDType(cfg *pyjson.Value) (dtype.DType, error) {
	for _, key := range []string{"dtype", "torch_dtype"} {
		v := cfg.Get(key)
		if v.IsNull() {
			continue
		}
		s, ok := v.AsString()
		if !ok {
			return dtype.Invalid, fmt.Errorf("convert: config.json: %q is not a string", key)
		}
		if s == "auto" {
			continue
		}
		d, ok := dtype.FromTorchName(s)
		if !ok || !modelDType(d) {
			return dtype.Invalid, fmt.Errorf("convert: config.json: unsupported %s %q (want bfloat16, float16 or float32, or pass --dtype)", key, s)
		}
		return d, nil
	}
	return dtype.Invalid, nil
}

// newPlan plans the conversion of the given source tensors (srcFiles[i] is
// the name of shard i, for errors). It reads no tensor data.
func newPlan(s *settings, tensors []srcTensor, srcFiles []string, cfg *pyjson.Value) (*Plan, error) {
	if len(tensors) == 0 {
		return nil, fmt.Errorf("convert: the source holds no tensors")
	}
	p := &Plan{s: s, srcFiles: srcFiles}
	// The names of absmax tensors (of an already-quantized input): few,
	// not a set of every name.
	names := map[string]bool{}
	for _, t := range tensors {
		if strings.HasSuffix(t.Name, ".absmax") {
			names[t.Name] = true
		}
	}
	// An already-quantized input is not converted again.
	for _, t := range tensors {
		if t.verbatim {
			continue
		}
		if strings.Contains(lastComponent(t.Name), "quant_state") || strings.Contains(t.Name, ".quant_state.") {
			return nil, fmt.Errorf("convert: %s: tensor %q: the checkpoint is already quantized (it has bitsandbytes quant state)", srcFiles[t.shard], t.Name)
		}
		if t.DType == dtype.U8 && len(t.Shape) == 2 && t.Shape[1] == 1 && names[t.Name+".absmax"] {
			return nil, fmt.Errorf("convert: %s: tensor %q: the checkpoint is already quantized (packed 4-bit weight with absmax)", srcFiles[t.shard], t.Name)
		}
		switch last := lastComponent(t.Name); last {
		case "SCB", "qweight", "qzeros", "weight_scale", "weight_scale_inv":
			return nil, fmt.Errorf("convert: %s: tensor %q: the checkpoint is already quantized (%s tensors belong to 8-bit, GPTQ/AWQ or FP8 checkpoints)", srcFiles[t.shard], t.Name, last)
		}
	}
	if err := p.lookupArch(s, cfg); err != nil && !s.dense {
		return nil, err
	}
	if s.dense {
		// The warnings are about which tensors to quantize.
		p.Warnings = nil
	}
	if cfg.Has("quantization_config") && !s.dense {
		return nil, fmt.Errorf("convert: config.json already has a quantization_config: the checkpoint is already quantized")
	}

	// The model dtype.
	p.ModelDType = s.dtype
	if p.ModelDType == dtype.Invalid {
		d, err := configDType(cfg)
		if err != nil {
			return nil, err
		}
		p.ModelDType = d
	}
	if p.ModelDType == dtype.Invalid {
		// The dtype the floating-point tensors share, if they do.
		for _, t := range tensors {
			if !t.DType.IsFloat() {
				continue
			}
			if p.ModelDType == dtype.Invalid {
				p.ModelDType = t.DType
			} else if p.ModelDType != t.DType {
				p.ModelDType = dtype.Invalid
				break
			}
		}
		if !modelDType(p.ModelDType) {
			p.ModelDType = dtype.Invalid
		}
	}
	p.ComputeDType = s.computeDType
	if p.ComputeDType == dtype.Invalid {
		p.ComputeDType = p.ModelDType
		if p.ComputeDType == dtype.Invalid {
			p.ComputeDType = dtype.F32
		}
	}

	// Items in state-dict order. One slab holds them all, and the order
	// is sorted as indexes: no copy of the tensor list.
	order := make([]int32, len(tensors))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortStableFunc(order, func(x, y int32) int {
		a, b := &tensors[x], &tensors[y]
		an, ak := a.orderKey()
		bn, bk := b.orderKey()
		return cmp.Or(cmp.Compare(a.shard, b.shard), outdir.StateDictCompare(an, bn), cmp.Compare(ak, bk))
	})
	slab := make([]item, len(tensors))
	p.items = make([]*item, 0, len(tensors))
	sel := selector{skip: s.skip, include: s.include, arch: p.Arch}
	defaultSel := true
	var skipModules []string
	for i, ti := range order {
		t := &tensors[ti]
		it := &slab[i]
		*it = item{src: t, dtype: t.DType, index: len(p.items), qi: -1}
		p.items = append(p.items, it)
		if t.verbatim {
			// Copied as it is; a packed 4-bit weight counts as quantized
			// (two parameters a byte), its companions as no parameters,
			// as inspect counts a 4-bit checkpoint.
			it.reason = arch.ReasonPrequantized
			if _, k := t.orderKey(); k != entryData {
				continue
			}
			// Sorted, a packed weight is followed by its absmax.
			if next := i + 1; t.DType != dtype.U8 || next == len(order) || !tensors[order[next]].verbatim || tensors[order[next]].Name != t.Name+".absmax" {
				p.Kept++
				p.TotalParameters += t.NumElements()
				continue
			}
			p.Quantized++
			p.TotalParameters += 2 * t.NumElements()
			continue
		}
		c, def, err := sel.decide(t.Name, t.DType, t.Shape)
		if err != nil {
			return nil, fmt.Errorf("%w (in %s)", err, srcFiles[t.shard])
		}
		q := c.quantize && !s.dense
		it.quantize, it.transposed, it.reason = q, q && c.transposed, c.reason
		if t.DType.IsFloat() && p.ModelDType != dtype.Invalid && !t.ownDType {
			it.dtype = p.ModelDType
		}
		if !q && c.f32 && t.DType.IsFloat() {
			// transformers creates this parameter in float32 and keeps it so.
			it.dtype = dtype.F32
		}
		if t.DType.IsFloat() && !modelDType(t.DType) && it.dtype != t.DType {
			return nil, fmt.Errorf("convert: %s: tensor %q: unsupported dtype %v (cannot convert it to %v)", srcFiles[t.shard], t.Name, t.DType, it.dtype)
		}
		if q != def.quantize && !s.dense {
			defaultSel = false
		}
		if !q && c.linear {
			skipModules = append(skipModules, moduleName(t.Name))
		}
		if q {
			it.qi = int32(p.numQuantize)
			p.numQuantize++
			p.Quantized++
			p.TotalParameters += 2 * bnb.PackedBytes(t.NumElements())
		} else {
			p.Kept++
			p.TotalParameters += t.NumElements()
		}
	}
	for _, g := range s.skip {
		if !slices.ContainsFunc(tensors, func(t srcTensor) bool { return globMatch([]string{g}, t.Name) }) {
			p.Warnings = append(p.Warnings, fmt.Sprintf("--skip %q matches no tensor", g))
		}
	}
	for _, g := range s.include {
		if !slices.ContainsFunc(tensors, func(t srcTensor) bool { return globMatch([]string{g}, t.Name) }) {
			p.Warnings = append(p.Warnings, fmt.Sprintf("--include %q matches no tensor", g))
		}
	}
	if !defaultSel {
		p.SkipModules = skipModules
		if p.SkipModules == nil {
			p.SkipModules = []string{}
		}
		slices.Sort(p.SkipModules)
	}

	// Output entries, in state-dict order, and their sizes for sharding;
	// all entries in one slab.
	nEntries := 0
	for _, it := range p.items {
		nEntries += p.numEntries(it)
	}
	entries := make([]entry, 0, nEntries)
	sizes := make([]int64, 0, nEntries)
	refs := make([]entryRef, 0, nEntries)
	for _, it := range p.items {
		first := len(entries)
		if first > math.MaxInt32 {
			return nil, fmt.Errorf("convert: more than %d output tensors", math.MaxInt32)
		}
		it.first = int32(first)
		entries = p.addEntries(entries, it)
		it.entries = entries[first:len(entries):len(entries)]
		for j := range it.entries {
			e := &it.entries[j]
			refs = append(refs, entryRef{int32(it.index), int32(j)})
			sz, err := p.entrySize(it, e)
			if err != nil {
				return nil, err
			}
			sizes = append(sizes, sz)
		}
	}

	// Output names are unique: sorted, no two neighbours are equal.
	outNames := make([]string, len(refs)) // only the companions' are new strings
	byName := make([]int32, len(refs))
	for k, r := range refs {
		it := p.items[r.item]
		outNames[k] = p.entryName(it, &it.entries[r.entry])
		byName[k] = int32(k)
	}
	slices.SortFunc(byName, func(a, b int32) int { return strings.Compare(outNames[a], outNames[b]) })
	for k := 1; k < len(byName); k++ {
		if a, b := byName[k-1], byName[k]; outNames[a] == outNames[b] {
			if refs[a].item > refs[b].item {
				a, b = b, a
			}
			return nil, fmt.Errorf("convert: output tensor %q of %q clashes with one of %q", outNames[b], p.items[refs[b].item].src.Name, p.items[refs[a].item].src.Name)
		}
	}
	outNames = nil
	byName = nil

	// Shards as huggingface_hub's split_state_dict_into_shards_factory.
	shards := outdir.Split(sizes, s.maxShard)
	for i, sh := range shards {
		fp := FilePlan{Name: outdir.FileName(i, len(shards))}
		for _, k := range sh {
			fp.entries = append(fp.entries, refs[k])
			p.items[refs[k].item].entries[refs[k].entry].file = int32(i)
		}
		p.Files = append(p.Files, fp)
	}
	return p, nil
}

// numEntries is the number of output tensors of it.
func (p *Plan) numEntries(it *item) int {
	switch {
	case !it.quantize:
		return 1
	case p.s.doubleQuant:
		return 6
	}
	return 4
}

// addEntries appends it's entries to es, in the order of the state dict
// bitsandbytes' Linear4bit saves: the weight, then its quant state as
// QuantState.as_dict(packed=True) lists it.
func (p *Plan) addEntries(es []entry, it *item) []entry {
	if !it.quantize {
		return append(es, entry{kind: entryData, dtype: it.dtype})
	}
	es = append(es, entry{kind: entryData, dtype: dtype.U8})
	if p.s.doubleQuant {
		es = append(es,
			entry{kind: entryAbsmax, dtype: dtype.U8},
			entry{kind: entryQuantMap, dtype: dtype.F32},
			entry{kind: entryNestedAbsmax, dtype: dtype.F32},
			entry{kind: entryNestedQuantMap, dtype: dtype.F32},
		)
	} else {
		es = append(es,
			entry{kind: entryAbsmax, dtype: dtype.F32},
			entry{kind: entryQuantMap, dtype: dtype.F32},
		)
	}
	return append(es, entry{kind: entryQuantState, dtype: dtype.U8})
}

// entryName is the output tensor name of entry e of it: the source name,
// with the quant-state suffix for a 4-bit weight's companions.
func (p *Plan) entryName(it *item, e *entry) string {
	n := it.src.Name
	switch e.kind {
	case entryAbsmax:
		return n + ".absmax"
	case entryQuantMap:
		return n + ".quant_map"
	case entryNestedAbsmax:
		return n + ".nested_absmax"
	case entryNestedQuantMap:
		return n + ".nested_quant_map"
	case entryQuantState:
		return n + "." + bnb.QuantStateSuffix(p.s.quant)
	}
	return n
}

// entryShape is the shape of entry e of it; nil for the quant-state JSON,
// whose length the statistics decide.
func (p *Plan) entryShape(it *item, e *entry) []int64 {
	if !it.quantize {
		return it.src.Shape
	}
	nb := it.numBlocks(p.s.blocksize)
	switch e.kind {
	case entryData:
		return []int64{bnb.PackedBytes(it.numElements()), 1}
	case entryAbsmax:
		return []int64{nb}
	case entryQuantMap:
		return []int64{16}
	case entryNestedAbsmax:
		return []int64{bnb.NumBlocks(nb, bnb.NestedBlocksize)}
	case entryNestedQuantMap:
		return []int64{256}
	}
	return nil
}

// entrySize is the byte size of an entry; for a double-quantized quant
// state, the largest it can be.
func (p *Plan) entrySize(it *item, e *entry) (int64, error) {
	if e.kind == entryQuantState {
		return p.maxQuantStateLen(it), nil
	}
	n := int64(1)
	for _, d := range p.entryShape(it, e) {
		n *= d
	}
	sz := e.dtype.Size()
	if sz == 0 {
		return 0, fmt.Errorf("convert: tensor %q: unsupported dtype %v", p.entryName(it, e), e.dtype)
	}
	return n * int64(sz), nil
}

// configStrings returns config.json's "architectures" list and
// "model_type".
func configStrings(cfg *pyjson.Value) (archs []string, modelType string) {
	if a := cfg.Get("architectures"); a.Kind() == pyjson.KindArray {
		for i := 0; i < a.Len(); i++ {
			if s, ok := a.Index(i).AsString(); ok {
				archs = append(archs, s)
			}
		}
	}
	modelType, _ = cfg.Get("model_type").AsString()
	return archs, modelType
}

// lookupArch finds the checkpoint's architecture in formats/arch and
// refuses one that transformers cannot quantize, or warns that the table
// does not know it.
func (p *Plan) lookupArch(s *settings, cfg *pyjson.Value) error {
	tb := arch.Default()
	archs, mt := configStrings(cfg)
	p.Arch = tb.Lookup(archs, mt)
	if a := p.Arch; a != nil {
		if a.Refuse != "" || !a.QuantizesAnything() {
			why := a.Refuse
			if why == "" {
				why = "transformers quantizes no layer of this architecture"
			}
			return fmt.Errorf("convert: %s (model_type %q): %s; qconv does not write a 4-bit checkpoint that transformers %s cannot load as one",
				a.Class, a.ModelType, why, tb.Transformers)
		}
		return nil
	}
	what := fmt.Sprintf("model_type %q", mt)
	if len(archs) > 0 {
		what = fmt.Sprintf("%s (model_type %q)", archs[0], mt)
	}
	reason := "is not in qconv's architecture table"
	if len(archs) > 0 {
		if e, ok := tb.Unbuilt(archs[0]); ok {
			reason = "is in transformers but not in qconv's table (its generator could not build it: " + e + ")"
		}
	}
	if mt == "" && len(archs) == 0 {
		what, reason = "the checkpoint", "has no config.json naming its architecture"
	}
	p.Warnings = append(p.Warnings, fmt.Sprintf("%s %s (transformers %s); which tensors to quantize is decided by name rules, which are right for Llama-like decoders and can be wrong for others (mixture-of-experts above all): check the plan with --dry-run and the result with qconv audit",
		what, reason, tb.Transformers))
	return nil
}
