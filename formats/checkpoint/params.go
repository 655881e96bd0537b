package checkpoint

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"

	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/pyjson"
)

// quantStatePrefix is the last component of a quant-state key up to the
// quant type: "<weight>.quant_state.bitsandbytes__nf4".
const quantStatePrefix = ".quant_state.bitsandbytes__"

// companionSuffixes are the tensors bitsandbytes stores next to a packed
// 4-bit weight "<m>.weight", as "<m>.weight<suffix>" (spec §5.1).
var companionSuffixes = []string{".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"}

// A PackedWeight is a bitsandbytes 4-bit weight found by its quant-state
// tensor: "<m>.weight" with a sibling "<m>.weight.quant_state.bitsandbytes__nf4"
// (or __fp4). Its dtype does not matter: packed bytes may be stored as U8,
// BF16, F32, ... (bnb_4bit_quant_storage).
type PackedWeight struct {
	Name       string   // "<m>.weight"
	QuantType  string   // "nf4" or "fp4", from the quant-state key
	QuantState string   // name of the quant-state tensor
	Companions []string // names of the companion tensors present (absmax, quant_map, nested_*, quant state), sorted
}

// FindPackedWeights returns the packed 4-bit weights among names, sorted by
// name. A quant-state tensor whose weight is not in names is ignored here
// (the auditor reports it); so is a weight with two quant-state tensors,
// for which only the first in sort order counts.
func FindPackedWeights(names []string) []PackedWeight {
	// A sorted copy answers "is there a tensor called n" by binary search:
	// a map of every name would cost about 40 bytes a tensor.
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	have := func(n string) bool { _, ok := slices.BinarySearch(sorted, n); return ok }
	var out []PackedWeight
	seen := make(map[string]bool)
	for _, n := range sorted {
		i := strings.LastIndex(n, quantStatePrefix)
		if i < 0 {
			continue
		}
		weight, qt := n[:i], n[i+len(quantStatePrefix):]
		if (qt != "nf4" && qt != "fp4") || !strings.HasSuffix(weight, ".weight") || !have(weight) || seen[weight] {
			continue
		}
		seen[weight] = true
		pw := PackedWeight{Name: weight, QuantType: qt, QuantState: n}
		for _, s := range companionSuffixes {
			if have(weight + s) {
				pw.Companions = append(pw.Companions, weight+s)
			}
		}
		pw.Companions = append(pw.Companions, n)
		slices.Sort(pw.Companions)
		out = append(out, pw)
	}
	slices.SortFunc(out, func(a, b PackedWeight) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Params is the logical parameter count of a set of tensors.
type Params struct {
	// Total is the number of logical parameters: the elements of every
	// tensor, except that a packed 4-bit weight counts as the elements of
	// its original shape (from its quant-state JSON) and its companion
	// tensors count zero.
	Total int64
	// Quantized is the number of logical elements of the packed 4-bit
	// weights (included in Total).
	Quantized int64
	// PackedWeights is the number of packed 4-bit weights.
	PackedWeights int
	// PackedBytes is the byte size of the packed weights plus all their
	// companion tensors.
	PackedBytes int64
}

// BitsPerWeight returns the storage cost of the quantized weights in bits
// per logical element, PackedBytes*8/Quantized ("4.13 bpw" for NF4 with
// double quantization and blocksize 64), or 0 if nothing is quantized.
func (p Params) BitsPerWeight() float64 {
	if p.Quantized == 0 {
		return 0
	}
	return float64(p.PackedBytes) * 8 / float64(p.Quantized)
}

// LogicalParameters counts the logical parameters of tensors (see Params).
// readQuantState returns the bytes of the named quant-state tensor; only
// "shape" is read from the JSON, so that a count can be made even when
// other fields are wrong (the auditor checks them). An error names the
// tensor whose quant state is unreadable or has no valid shape.
//
// This is what transformers writes as total_parameters in an index
// (model.num_parameters()), except that transformers counts a packed weight
// as 2*itemsize*numel(packed tensor), which rounds an odd element count up.
func LogicalParameters(tensors []safetensors.TensorInfo, readQuantState func(name string) ([]byte, error)) (Params, error) {
	return logicalParameters(len(tensors), func(i int) *safetensors.TensorInfo { return &tensors[i] }, readQuantState)
}

// logicalParameters is LogicalParameters over n tensors given by at.
func logicalParameters(n int, at func(int) *safetensors.TensorInfo, readQuantState func(name string) ([]byte, error)) (Params, error) {
	names := make([]string, n)
	for i := range n {
		names[i] = at(i).Name
	}
	// Tensor sizes by name, through a name-sorted index (4 bytes a tensor,
	// not a map's 40 or more).
	order := make([]int32, n)
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return strings.Compare(names[a], names[b]) })
	size := func(name string) int64 {
		if k, ok := slices.BinarySearchFunc(order, name, func(i int32, name string) int { return strings.Compare(names[i], name) }); ok {
			return at(int(order[k])).Size()
		}
		return 0
	}
	packed := FindPackedWeights(names)
	skip := make(map[string]bool)
	var p Params
	for _, pw := range packed {
		b, err := readQuantState(pw.QuantState)
		if err != nil {
			return Params{}, err
		}
		n, err := quantStateElements(b)
		if err != nil {
			return Params{}, fmt.Errorf("checkpoint: tensor %q: %v", pw.QuantState, err)
		}
		if p.Total > math.MaxInt64-n {
			return Params{}, fmt.Errorf("checkpoint: tensor %q: parameter count overflows int64", pw.QuantState)
		}
		p.PackedWeights++
		p.Quantized += n
		p.Total += n
		skip[pw.Name] = true
		p.PackedBytes += size(pw.Name)
		for _, c := range pw.Companions {
			skip[c] = true
			p.PackedBytes += size(c)
		}
	}
	for i := range n {
		t := at(i)
		if skip[t.Name] {
			continue
		}
		n := t.NumElements()
		if p.Total > math.MaxInt64-n {
			return Params{}, fmt.Errorf("checkpoint: tensor %q: parameter count overflows int64", t.Name)
		}
		p.Total += n
	}
	return p, nil
}

// quantStateElements returns prod(shape) of a quant-state JSON blob.
func quantStateElements(b []byte) (int64, error) {
	shape, err := QuantStateShape(b)
	if err != nil {
		return 0, err
	}
	n := int64(1)
	for _, k := range shape {
		hi, lo := bits.Mul64(uint64(n), uint64(k))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("quant state shape %v overflows int64", shape)
		}
		n = int64(lo)
	}
	return n, nil
}

// QuantStateShape returns the "shape" of a bitsandbytes quant-state JSON
// (the bytes of a "<w>.quant_state.bitsandbytes__nf4" tensor): the
// logical shape of the packed weight. Only "shape" is read.
func QuantStateShape(b []byte) ([]int64, error) {
	v, err := pyjson.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("quant state is not valid JSON: %v", strings.TrimPrefix(err.Error(), "pyjson: "))
	}
	shape := v.Get("shape")
	if shape.Kind() != pyjson.KindArray {
		return nil, fmt.Errorf("quant state has no \"shape\" list")
	}
	out := make([]int64, 0, len(shape.Items()))
	for _, d := range shape.Items() {
		k, ok := d.Int64()
		if !ok || k < 0 {
			return nil, fmt.Errorf("quant state shape has an invalid dimension %s", d.MarshalCompact())
		}
		out = append(out, k)
	}
	return out, nil
}
