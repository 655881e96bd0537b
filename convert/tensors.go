package convert

import (
	"cmp"
	"slices"
	"sync"

	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

// TensorPlan says what a conversion makes of one source tensor: the line
// `qconv convert -v` prints for it ("[3/21] model.layers.0.mlp.up_proj.weight
// [256, 64] bf16 -> nf4, 32.77 kB -> 9.27 kB").
type TensorPlan struct {
	// Name and Shape are the source tensor's.
	Name  string
	Shape []int64
	// SrcDType is the source tensor's dtype.
	SrcDType dtype.DType
	// Quantized reports whether it becomes a 4-bit weight of QuantType;
	// else it is kept, stored as DType.
	Quantized bool
	QuantType bnb.QuantType
	// DType is the dtype of a kept tensor's output, and the dtype a
	// quantized weight is rounded to before it is quantized.
	DType dtype.DType
	// SrcBytes is the size of the source tensor's data.
	SrcBytes int64
	// OutBytes is the size of the output tensors made of it: the packed
	// weight and its quant-state tensors, or the kept tensor. Before the
	// conversion has written it, a double-quantized weight's quant-state
	// JSON is counted at its longest possible length.
	OutBytes int64
	// File is the name of the output file holding its data.
	File string
	// Reason says why it is quantized or kept: one of formats/arch's
	// Reason constants ("linear", "expert", "router", "embedding",
	// "user_skip", ...).
	Reason string
	// Transposed reports a GPT-2 style Conv1D weight, quantized as its
	// transpose (Shape is the source's [in, out]).
	Transposed bool
}

// Tensors lists what the plan makes of each source tensor, in the order of
// the output's state dict.
func (p *Plan) Tensors() []TensorPlan {
	out := make([]TensorPlan, len(p.items))
	for i, it := range p.items {
		out[i] = p.tensorPlan(it, -1)
	}
	return out
}

// tensorPlan describes it; qstateLen is the length of its quant-state JSON
// once known, or -1.
func (p *Plan) tensorPlan(it *item, qstateLen int64) TensorPlan {
	t := TensorPlan{
		Name: it.src.Name, Shape: it.src.Shape, SrcDType: it.src.DType,
		Quantized: it.quantize, DType: it.dtype, SrcBytes: it.src.Size(),
		Reason: it.reason, Transposed: it.transposed,
	}
	if it.quantize {
		t.QuantType = p.s.quant
	}
	for i := range it.entries {
		e := &it.entries[i]
		if e.kind == entryData {
			t.File = p.Files[e.file].Name
		}
		if e.kind == entryQuantState && qstateLen >= 0 {
			t.OutBytes += qstateLen
			continue
		}
		n, err := p.entrySize(it, e)
		if err == nil {
			t.OutBytes += n
		}
	}
	return t
}

// PlanOnly plans the conversion of the checkpoint at src with opts, as
// Convert would, and writes nothing: qconv convert --dry-run. Plan.Tensors
// then lists every tensor's fate, and Plan.Warnings what the user should
// know.
func PlanOnly(src string, opts Options) (*Plan, error) {
	s, err := opts.settings()
	if err != nil {
		return nil, err
	}
	in, err := openSource(src)
	if err != nil {
		return nil, err
	}
	defer in.ck.Close()
	p, err := newPlan(s, in.tensors, in.files, in.ck.Config)
	if err != nil {
		return nil, err
	}
	p.InputBytes = in.bytes
	return p, nil
}

// tensorOrder reports the items a run writes in the run's order (the
// state dict's), each once it and every item before it are written, so
// that convert -v prints its lines in order although workers finish items
// out of order. Reports are serialized; at most the items finished ahead
// of the oldest unfinished one wait (the job window bounds them).
type tensorOrder struct {
	mu     sync.Mutex
	items  []*item // in Plan.items order (found by binary search on index)
	done   []bool
	next   int // the oldest item not reported
	report func(*item)
}

// newTensorOrder returns a tensorOrder over items. Empty items have no
// jobs, so they count as written from the start: the leading ones are
// reported at once, the others right after the item before them.
func newTensorOrder(items []*item, report func(*item)) *tensorOrder {
	o := &tensorOrder{items: items, done: make([]bool, len(items)), report: report}
	for i, it := range items {
		o.done[i] = it.numElements() == 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flush()
	return o
}

// finished records that it is written and reports what is now in order.
func (o *tensorOrder) finished(it *item) {
	o.mu.Lock()
	defer o.mu.Unlock()
	i, ok := slices.BinarySearchFunc(o.items, it.index, func(x *item, index int) int { return cmp.Compare(x.index, index) })
	if !ok || o.done[i] {
		return
	}
	o.done[i] = true
	o.flush()
}

// flush reports the items written and not reported, up to the first one
// not written. o.mu must be held.
func (o *tensorOrder) flush() {
	for o.next < len(o.items) && o.done[o.next] {
		o.report(o.items[o.next])
		o.next++
	}
}
