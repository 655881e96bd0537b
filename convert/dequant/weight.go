package dequant

import (
	"errors"
	"fmt"
	"strings"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/convert/internal/jobs"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
)

// maxQuantStateBytes bounds the quant-state JSON tensor that LoadWeight
// reads; bitsandbytes writes under 300 bytes.
const maxQuantStateBytes = 64 << 10

// ErrWeight is matched (with errors.Is) by every *WeightError.
var ErrWeight = errors.New("dequant: invalid 4-bit weight")

// A WeightError says that a packed 4-bit weight and its quant state do not
// fit together (a missing or mis-sized quant-state tensor, an invalid
// quant-state JSON). I/O errors are not WeightErrors.
type WeightError struct {
	Path   string // the checkpoint
	Tensor string // the weight
	Msg    string
}

// Error formats the error as `dequant: PATH: tensor "NAME": MSG`.
func (e *WeightError) Error() string {
	return fmt.Sprintf("dequant: %s: tensor %q: %s", e.Path, e.Tensor, e.Msg)
}

// Is reports whether target is ErrWeight.
func (e *WeightError) Is(target error) bool { return target == ErrWeight }

// A Weight is one bitsandbytes 4-bit weight of a checkpoint: the packed
// codes, the tensors of its quant state, and the parsed quant-state JSON.
// LoadWeight checks that they fit together, so that ReadBlocks can only fail
// on I/O. A Weight is safe for concurrent use.
type Weight struct {
	// Name is the weight's name, "<module>.weight".
	Name string
	// State is the parsed quant-state JSON: quant type, block size, the
	// dtype and shape of the original weight, double-quant settings.
	State bnb.QuantState
	// Packed is the tensor of packed 4-bit codes. Its dtype is the
	// checkpoint's quant storage (U8, or F32/BF16/F16...); only its raw
	// bytes matter.
	Packed checkpoint.Tensor
	// Companions are the names of the quant-state tensors stored next to
	// the weight (absmax, quant_map, nested_absmax, nested_quant_map and
	// the JSON blob), sorted. A dense checkpoint has none of them.
	Companions []string
	// DType is State.DType as a dtype: the dtype of the weight before it
	// was quantized, and of bitsandbytes' dequantize_4bit output.
	DType dtype.DType

	n            int64 // elements of the original weight
	nblocks      int64
	absmax       checkpoint.Tensor // F32 [nblocks], or U8 [nblocks] with double quant
	nestedAbsmax checkpoint.Tensor // F32 [ceil(nblocks/256)], double quant only
	// nestedMap is the stored nested_quant_map (double quant only), with
	// which bitsandbytes dequantizes the absmax codes.
	nestedMap [256]float32
}

// NumElements is the number of elements of the original weight, the
// product of State.Shape.
func (w *Weight) NumElements() int64 { return w.n }

// NumBlocks is the number of 4-bit blocks, the length of the absmax vector.
func (w *Weight) NumBlocks() int64 { return w.nblocks }

// NestedMap returns the 8-bit code book of the double-quantized absmax
// values, as stored in nested_quant_map (what bitsandbytes uses to
// dequantize them). Without double quantization it is all zeros.
func (w *Weight) NestedMap() [256]float32 { return w.nestedMap }

// FindWeights returns the bitsandbytes 4-bit weights of c, sorted by name,
// each checked by LoadWeight. A checkpoint without any gives none.
func FindWeights(c *checkpoint.Checkpoint) ([]*Weight, error) {
	names := make([]string, 0, len(c.Tensors()))
	for _, t := range c.Tensors() {
		names = append(names, t.Name)
	}
	var ws []*Weight
	pws := checkpoint.FindPackedWeights(names)
	if err := CheckOrphans(c, pws); err != nil {
		return nil, err
	}
	for _, pw := range pws {
		w, err := LoadWeight(c, pw)
		if err != nil {
			return nil, err
		}
		ws = append(ws, w)
	}
	return ws, nil
}

// statSuffixes are the names of the quant-state tensors bitsandbytes saves
// beside a packed weight W (W.absmax, ...), other than its JSON blob.
var statSuffixes = []string{".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"}

// CheckOrphans returns a *WeightError for a quant-state tensor of c
// (W.absmax, W.quant_map, W.nested_absmax, W.nested_quant_map, or a
// W.quant_state.* blob) that belongs to none of the packed weights pws:
// the quant-state JSON of W was deleted, or W itself (audit's BNB003 and
// BNB012). Such a checkpoint cannot be dequantized or loaded.
func CheckOrphans(c *checkpoint.Checkpoint, pws []checkpoint.PackedWeight) error {
	owned := map[string]bool{}
	for _, pw := range pws {
		owned[pw.Name] = true
		for _, n := range pw.Companions {
			owned[n] = true
		}
	}
	for _, t := range c.Tensors() {
		if owned[t.Name] {
			continue
		}
		if i := strings.LastIndex(t.Name, ".quant_state."); i > 0 {
			return &WeightError{Path: c.Path, Tensor: t.Name[:i], Msg: fmt.Sprintf("quant state %q belongs to no packed weight (the weight is missing, or it has several quant states)", t.Name)}
		}
		for _, suf := range statSuffixes {
			if base, ok := strings.CutSuffix(t.Name, suf); ok && base != "" {
				if _, isT := c.Tensor(base); isT {
					return &WeightError{Path: c.Path, Tensor: base, Msg: fmt.Sprintf("has quantization statistics (%q) but no quant_state.bitsandbytes__nf4/fp4 tensor: its quant state was deleted; the weight cannot be dequantized", t.Name)}
				}
				return &WeightError{Path: c.Path, Tensor: base, Msg: fmt.Sprintf("quantization statistics %q exist but the weight does not (a missing shard?)", t.Name)}
			}
		}
	}
	return nil
}

// LoadWeight reads the quant state of the packed weight pw of c (the JSON
// blob, and the nested code book under double quantization) and checks that
// every tensor the state needs is there with the dtype and size bitsandbytes
// gives it. Errors name the checkpoint and the tensor.
func LoadWeight(c *checkpoint.Checkpoint, pw checkpoint.PackedWeight) (*Weight, error) {
	errf := func(format string, args ...any) error {
		return &WeightError{Path: c.Path, Tensor: pw.Name, Msg: fmt.Sprintf(format, args...)}
	}
	get := func(suffix string) (checkpoint.Tensor, error) {
		t, ok := c.Tensor(pw.Name + suffix)
		if !ok {
			return t, errf("missing quant-state tensor %q", pw.Name+suffix)
		}
		return t, nil
	}
	w := &Weight{Name: pw.Name, Companions: pw.Companions}
	var ok bool
	if w.Packed, ok = c.Tensor(pw.Name); !ok {
		return nil, errf("missing")
	}
	qs, err := get("." + bnb.QuantStateSuffix(qtOf(pw.QuantType)))
	if err != nil {
		return nil, err
	}
	if qs.Size() > maxQuantStateBytes {
		return nil, errf("quant state %q is %d bytes, more than %d", qs.Name, qs.Size(), maxQuantStateBytes)
	}
	blob, err := qs.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("dequant: %s: %w", c.Path, err)
	}
	if w.State, err = bnb.ParseQuantState(blob); err != nil {
		return nil, errf("%v", err)
	}
	st := &w.State
	if st.QuantType.String() != pw.QuantType {
		return nil, errf("quant state says %q but its key says %q", st.QuantType, pw.QuantType)
	}
	if w.DType, ok = dtype.FromTorchName(st.DType); !ok {
		return nil, errf("quant state has unknown dtype %q", st.DType)
	}
	if w.DType != dtype.F32 && w.DType != dtype.BF16 && w.DType != dtype.F16 {
		// bitsandbytes quantizes float32, bfloat16 and float16 weights only
		// (and the output could not be written in another dtype).
		return nil, errf("quant state has unsupported dtype %q (want float32, bfloat16 or float16)", st.DType)
	}
	// The checks audit makes too (formats/bnb's judgement of a stored
	// weight): a 2-D shape, exactly the packed bytes it needs, finite
	// statistics.
	if w.n, err = bnb.CheckShape(st.Shape, c.Config != nil); err != nil {
		return nil, errf("%v", err)
	}
	w.nblocks = bnb.NumBlocks(w.n, st.Blocksize)
	if err := bnb.CheckPackedBytes(w.n, w.Packed.Size()); err != nil {
		return nil, errf("%v", err)
	}
	if err := bnb.CheckOffset(*st); err != nil {
		return nil, errf("%v", err)
	}
	if w.absmax, err = get(".absmax"); err != nil {
		return nil, err
	}
	wantAbsmax := dtype.F32
	if st.DoubleQuant {
		wantAbsmax = dtype.U8
	}
	if w.absmax.DType != wantAbsmax || w.absmax.NumElements() != w.nblocks {
		return nil, errf("absmax is %v %v, want %v [%d] (double quant %v, blocksize %d)",
			w.absmax.DType, w.absmax.Shape, wantAbsmax, w.nblocks, st.DoubleQuant, st.Blocksize)
	}
	if !st.DoubleQuant {
		return w, nil
	}
	if w.nestedAbsmax, err = get(".nested_absmax"); err != nil {
		return nil, err
	}
	nn := bnb.NumBlocks(w.nblocks, bnb.NestedBlocksize)
	if w.nestedAbsmax.DType != dtype.F32 || w.nestedAbsmax.NumElements() != nn {
		return nil, errf("nested_absmax is %v %v, want F32 [%d]", w.nestedAbsmax.DType, w.nestedAbsmax.Shape, nn)
	}
	// nested_absmax is small (4 bytes per 256 blocks): check it now.
	nraw, err := w.nestedAbsmax.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("dequant: %s: %w", c.Path, err)
	}
	nested := make([]float32, nn)
	cast.Decode(nested, nraw, dtype.F32, dtype.F32)
	if err := bnb.CheckStats(w.nestedAbsmax.Name, nested); err != nil {
		return nil, errf("%v", err)
	}
	nm, err := get(".nested_quant_map")
	if err != nil {
		return nil, err
	}
	if nm.DType != dtype.F32 || nm.NumElements() != 256 {
		return nil, errf("nested_quant_map is %v %v, want F32 [256]", nm.DType, nm.Shape)
	}
	raw, err := nm.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("dequant: %s: %w", c.Path, err)
	}
	cast.Decode(w.nestedMap[:], raw, dtype.F32, dtype.F32)
	return w, nil
}

func qtOf(s string) bnb.QuantType {
	q, _ := bnb.ParseQuantType(s)
	return q
}

// Blocks is a run of whole 4-bit blocks of a Weight as stored, read by
// ReadBlocks. Its slices are reused by the next ReadBlocks call.
type Blocks struct {
	// First is the index of the first block.
	First int64
	// Elements is the number of weight elements the blocks cover (the
	// last block of a weight may be partial).
	Elements int
	// Packed holds the 4-bit codes of the elements, two per byte, the
	// first element in the high nibble.
	Packed []byte
	// Absmax holds the scale of each block, after undoing double
	// quantization.
	Absmax []float32
	// Codes (double quantization only) holds the stored 8-bit code of each
	// block's absmax, and Nested the nested absmax that scales it: block
	// First+i uses Nested[i/bnb.NestedBlocksize] (First is a multiple of
	// bnb.NestedBlocksize).
	Codes  []byte
	Nested []float32

	raw []byte
}

// ReadBlocks reads count blocks starting at block first into b, clipped to
// the weight's last block. Under double quantization first must be a
// multiple of bnb.NestedBlocksize. Absmax values are recovered exactly as
// bitsandbytes' dequantize_4bit does, with the stored nested_quant_map.
func (w *Weight) ReadBlocks(b *Blocks, first, count int64) error {
	if first < 0 || count < 0 || first > w.nblocks {
		return fmt.Errorf("dequant: tensor %q: blocks [%d,+%d) out of range", w.Name, first, count)
	}
	if w.State.DoubleQuant && first%bnb.NestedBlocksize != 0 {
		return fmt.Errorf("dequant: tensor %q: first block %d is not a multiple of %d", w.Name, first, bnb.NestedBlocksize)
	}
	count = min(count, w.nblocks-first)
	bs := int64(w.State.Blocksize)
	elems := min(w.n-first*bs, count*bs)
	b.First, b.Elements = first, int(elems)
	b.Packed = jobs.Grow(b.Packed, int(bnb.PackedBytes(elems)))
	if err := readAt(w.Packed, b.Packed, first*bs/2); err != nil {
		return err
	}
	b.Absmax = jobs.Grow(b.Absmax, int(count))
	if !w.State.DoubleQuant {
		b.raw = jobs.Grow(b.raw, int(4*count))
		if err := readAt(w.absmax, b.raw, 4*first); err != nil {
			return err
		}
		cast.Decode(b.Absmax, b.raw, dtype.F32, dtype.F32)
		b.Codes, b.Nested = b.Codes[:0], b.Nested[:0]
		if err := bnb.CheckStats(w.absmax.Name, b.Absmax); err != nil {
			return &WeightError{Path: w.Packed.Shard.Path, Tensor: w.Name, Msg: err.Error()}
		}
		return nil
	}
	b.Codes = jobs.Grow(b.Codes, int(count))
	if err := readAt(w.absmax, b.Codes, first); err != nil {
		return err
	}
	nn := bnb.NumBlocks(count, bnb.NestedBlocksize)
	b.raw = jobs.Grow(b.raw, int(4*nn))
	if err := readAt(w.nestedAbsmax, b.raw, 4*(first/bnb.NestedBlocksize)); err != nil {
		return err
	}
	b.Nested = jobs.Grow(b.Nested, int(nn))
	cast.Decode(b.Nested, b.raw, dtype.F32, dtype.F32)
	bnb.UndoDoubleQuantMap(b.Absmax, b.Codes, b.Nested, &w.nestedMap, w.State.NestedOffset)
	return nil
}

// Dequantize writes the values of the elements b covers to dst[:b.Elements]
// as float32, exactly as bitsandbytes' CUDA dequantize_4bit computes them
// before it rounds them to the weight's dtype.
func (w *Weight) Dequantize(dst []float32, b *Blocks) {
	bnb.DequantizeBlocks(dst[:b.Elements], b.Packed, b.Absmax, w.State.Blocksize, w.State.QuantType)
}

func readAt(t checkpoint.Tensor, p []byte, off int64) error {
	if _, err := t.SectionReader().ReadAt(p, off); err != nil {
		return fmt.Errorf("dequant: %s: tensor %q: %w", t.Shard.Path, t.Name, err)
	}
	return nil
}
