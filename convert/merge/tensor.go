package merge

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"

	"github.com/qconv/qconv/convert/dequant"
	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/convert/internal/jobs"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
)

// A baseTensor is one tensor of the base model as the merge sees it: a
// dense tensor of the checkpoint, or a 4-bit weight seen dequantized.
type baseTensor struct {
	name  string
	dtype dtype.DType
	shape []int64
	shard int
	data  io.ReaderAt // bytes in dtype
	// path and stored name, for messages.
	path, stored string
	packed       bool            // a dequantized 4-bit weight
	weight       *dequant.Weight // packed: the 4-bit weight
}

func (t *baseTensor) numElements() int64 {
	n := int64(1)
	for _, d := range t.shape {
		n *= d
	}
	return n
}

// dequantReader reads a 4-bit weight's values, dequantized exactly as
// bitsandbytes' dequantize_4bit does and rounded to the weight's dtype
// (what dequantize_4bit returns), as bytes of that dtype.
type dequantReader struct {
	w    *dequant.Weight
	pool sync.Pool // *dequantScratch
}

type dequantScratch struct {
	blocks dequant.Blocks
	vals   []float32
}

func (r *dequantReader) ReadAt(p []byte, off int64) (int, error) {
	size := int64(r.w.DType.Size())
	if off%size != 0 || int64(len(p))%size != 0 {
		return 0, fmt.Errorf("merge: tensor %q: read of [%d,+%d) is not of whole elements", r.w.Name, off, len(p))
	}
	start, n := off/size, int64(len(p))/size
	if start < 0 || start+n > r.w.NumElements() {
		return 0, io.ErrUnexpectedEOF
	}
	sc, _ := r.pool.Get().(*dequantScratch)
	if sc == nil {
		sc = new(dequantScratch)
	}
	defer r.pool.Put(sc)
	bs := int64(r.w.State.Blocksize)
	group := bs
	if r.w.State.DoubleQuant {
		group = bs * bnb.NestedBlocksize // ReadBlocks starts at a nested block
	}
	first := start / group * group
	end := start + n
	count := (end - first + bs - 1) / bs
	if err := r.w.ReadBlocks(&sc.blocks, first/bs, count); err != nil {
		return 0, err
	}
	sc.vals = jobs.Grow(sc.vals, sc.blocks.Elements)
	r.w.Dequantize(sc.vals, &sc.blocks)
	cast.Encode(p, sc.vals[start-first:end-first], r.w.DType)
	return len(p), nil
}

// A mergedTensor computes the merged bytes of one base tensor when they
// are read: the base values (or the adapter's whole replacement of them),
// plus the LoRA delta, each element correctly rounded (see round.go).
type mergedTensor struct {
	name       string
	src        io.ReaderAt // W's bytes, in srcDType
	srcDType   dtype.DType
	srcName    string // for messages: file and tensor W comes from
	out        dtype.DType
	rows, cols int64
	// delta, if not nil, is added: a LoRA module's factors (weights) or
	// its lora_B.bias (biases, rows = 1).
	delta   *factorSource
	scaling float32
	exact   *atomic.Int64 // elements that needed exact arithmetic
	pool    sync.Pool     // *mergeScratch
}

type mergeScratch struct {
	raw  []byte
	vals []float32
}

func (m *mergedTensor) ReadAt(p []byte, off int64) (int, error) {
	osz := int64(m.out.Size())
	if off%osz != 0 || int64(len(p))%osz != 0 {
		return 0, fmt.Errorf("merge: tensor %q: read of [%d,+%d) is not of whole elements", m.name, off, len(p))
	}
	start, n := off/osz, int64(len(p))/osz
	if start < 0 || start+n > m.rows*m.cols {
		return 0, io.ErrUnexpectedEOF
	}
	sc, _ := m.pool.Get().(*mergeScratch)
	if sc == nil {
		sc = new(mergeScratch)
	}
	defer m.pool.Put(sc)
	isz := int64(m.srcDType.Size())
	sc.raw = jobs.Grow(sc.raw, int(n*isz))
	got, err := m.src.ReadAt(sc.raw, start*isz)
	if got == len(sc.raw) {
		err = nil
	} else if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return 0, fmt.Errorf("merge: %s: %w", m.srcName, err)
	}
	sc.vals = jobs.Grow(sc.vals, int(n))
	cast.Decode(sc.vals, sc.raw, m.srcDType, m.srcDType)
	if m.delta == nil {
		// A whole replacement: one rounding to the output dtype.
		cast.Encode(p, sc.vals, m.out)
		return len(p), nil
	}
	f, err := m.delta.get()
	if err != nil {
		return 0, err
	}
	if err := f.mergeInto(p, sc.vals, start, m.cols, m.scaling, m.out, m.exact); err != nil {
		return 0, err
	}
	return len(p), nil
}

// factors are a module's LoRA factors laid out for the kernel: element
// (i, j) of the delta, before scaling, is Σ_k L[i·r+k]·R[j·r+k]. The
// values are float32 (or bf16/f16) ones held in float64.
type factors struct {
	r    int
	l, t []float64 // L [rows, r], R [cols, r]: float32 values
	lmax []float64 // per row: max_k |L[i,k]|
	rsum []float64 // per column: Σ_k |R[j,k]|
}

// mergeInto writes to p the merged values of elements [start, start+len(w))
// of a tensor with cols columns whose base values are w.
func (f *factors) mergeInto(p []byte, w []float32, start, cols int64, s float32, out dtype.DType, exact *atomic.Int64) error {
	r := int64(f.r)
	osz := out.Size()
	of := formatOf(out)
	sd := float64(s)
	// The error bound of round.go: E = c·M_i·C_j + tiny.
	c := 2 * float64(r+1) * unit * math.Abs(sd)
	const tiny = 0x1p-1070
	var nExact int64
	bf16 := out == dtype.BF16
	for idx := int64(0); idx < int64(len(w)); {
		e := start + idx
		i, j0 := e/cols, e%cols
		n := min(cols-j0, int64(len(w))-idx)
		lrow := f.l[i*r : (i+1)*r]
		ci := c * f.lmax[i]
		rsum := f.rsum[j0 : j0+n]
		ws := w[idx : idx+n]
		ps := p[int(idx)*osz:]
		for jj := range ws {
			j := j0 + int64(jj)
			rrow := f.t[j*r : (j+1)*r]
			d := dot(lrow, rrow) * sd
			bound := ci*rsum[jj] + tiny
			delta := float32(d - bound)
			if delta != float32(d+bound) {
				delta = exactDelta(sd, lrow, rrow)
				nExact++
			}
			if bf16 {
				// The common case inline: bf16 bits straight from the
				// float64 bits of the sum (see roundTo).
				x, e := twoSum(float64(ws[jj]), float64(delta))
				if b, ok := bf16Bits(x, e); ok {
					ps[2*jj], ps[2*jj+1] = byte(b), byte(b>>8)
					continue
				}
			}
			encode(ps[jj*osz:], addRounded(float64(ws[jj]), delta, of), out)
		}
		idx += n
	}
	if nExact > 0 && exact != nil {
		exact.Add(nExact)
	}
	return nil
}

// dot returns Σ_k l[k]·r[k] in float64: each product of two float32 is
// exact, and the sum has the error bound of round.go whatever its order
// (four partial sums here, for speed).
func dot(l, r []float64) float64 {
	r = r[:len(l)]
	var s0, s1, s2, s3 float64
	k := 0
	for ; k+4 <= len(l); k += 4 {
		s0 += l[k] * r[k]
		s1 += l[k+1] * r[k+1]
		s2 += l[k+2] * r[k+2]
		s3 += l[k+3] * r[k+3]
	}
	for ; k < len(l); k++ {
		s0 += l[k] * r[k]
	}
	return (s0 + s1) + (s2 + s3)
}

// exactDelta is round32(s · Σ_k l[k]·r[k]) computed exactly (the fallback).
func exactDelta(s float64, l, r []float64) float32 { return exactRound32(s, l, r) }

// A factorSource loads a module's factors on first use and keeps them in
// a cache shared by the tensors of a merge.
type factorSource struct {
	key   string
	load  func() (*factors, error)
	cache *factorCache
}

func (fs *factorSource) get() (*factors, error) { return fs.cache.get(fs.key, fs.load) }

// factorCache holds the factors of the most recently used modules, at
// most cap of them: the pipeline works on a window of consecutive tensors
// (see the convert package's Memory section), so a few modules are in use
// at a time and each is loaded once per pass. Loading is single-flight:
// workers that need a module being loaded wait for it.
type factorCache struct {
	mu      sync.Mutex
	cap     int
	entries map[string]*cacheEntry
	clock   int64
}

type cacheEntry struct {
	ready chan struct{}
	f     *factors
	err   error
	used  int64
}

func newFactorCache(capacity int) *factorCache {
	return &factorCache{cap: max(capacity, 2), entries: map[string]*cacheEntry{}}
}

func (c *factorCache) get(key string, load func() (*factors, error)) (*factors, error) {
	c.mu.Lock()
	c.clock++
	e := c.entries[key]
	if e != nil {
		e.used = c.clock
		c.mu.Unlock()
		<-e.ready
		return e.f, e.err
	}
	e = &cacheEntry{ready: make(chan struct{}), used: c.clock}
	c.entries[key] = e
	for len(c.entries) > c.cap {
		var oldest string
		var ot int64 = math.MaxInt64
		for k, x := range c.entries {
			if x.used < ot && k != key {
				oldest, ot = k, x.used
			}
		}
		delete(c.entries, oldest)
	}
	c.mu.Unlock()
	e.f, e.err = load()
	close(e.ready)
	return e.f, e.err
}

// readFloats reads a float tensor of the adapter as float64 values (exact:
// F32, BF16 and F16 widen exactly; float64 saves the kernel a conversion
// per product) and checks that they are finite.
func readFloats(t checkpoint.Tensor) ([]float64, error) {
	b, err := t.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("merge: %s: tensor %q: %w", t.Shard.Path, t.Name, err)
	}
	v32 := make([]float32, t.NumElements())
	cast.Decode(v32, b, t.DType, t.DType)
	v := make([]float64, len(v32))
	for i, x := range v32 {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil, fmt.Errorf("merge: %s: tensor %q: element %d is %v (a LoRA factor must be finite)", t.Shard.Path, t.Name, i, x)
		}
		v[i] = float64(x)
	}
	return v, nil
}

// loadFactors reads a module's A [r, a1] and B [b0, r] and lays them out:
// with transposed false (a Linear weight [out, in] = [b0, a1]) L = B and
// R = Aᵀ; with transposed true (a Conv1D weight [in, out] = [a1, b0] with
// fan_in_fan_out, or an embedding [num_embeddings, dim] = [a1, b0]) L = Aᵀ
// and R = B.
func loadFactors(m *Module, transposed bool) (*factors, error) {
	a, err := readFloats(m.A)
	if err != nil {
		return nil, err
	}
	b, err := readFloats(m.B)
	if err != nil {
		return nil, err
	}
	r, a1 := int(m.A.Shape[0]), int(m.A.Shape[1])
	at := make([]float64, len(a)) // Aᵀ [a1, r]
	for k := 0; k < r; k++ {
		for j := 0; j < a1; j++ {
			at[j*r+k] = a[k*a1+j]
		}
	}
	f := &factors{r: r, l: b, t: at}
	if transposed {
		f.l, f.t = at, b
	}
	f.lmax = rowStat(f.l, r, func(acc, x float64) float64 { return max(acc, x) })
	f.rsum = rowStat(f.t, r, func(acc, x float64) float64 { return acc + x })
	return f, nil
}

// biasFactors lays out lora_B.bias as factors of rank 1 of a [1, n]
// tensor: delta_j = 1 · bias_j.
func biasFactors(t checkpoint.Tensor) (*factors, error) {
	v, err := readFloats(t)
	if err != nil {
		return nil, err
	}
	f := &factors{r: 1, l: []float64{1}, t: v}
	f.lmax = []float64{1}
	f.rsum = rowStat(v, 1, func(acc, x float64) float64 { return acc + x })
	return f, nil
}

// rowStat folds |x| over each row of r values of v.
func rowStat(v []float64, r int, fold func(acc, x float64) float64) []float64 {
	out := make([]float64, len(v)/r)
	for i := range out {
		var acc float64
		for _, x := range v[i*r : (i+1)*r] {
			acc = fold(acc, math.Abs(x))
		}
		out[i] = acc
	}
	return out
}
