package verify

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync/atomic"

	"github.com/qconv/qconv/convert/dequant"
	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/convert/internal/jobs"
	"github.com/qconv/qconv/convert/internal/transpose"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/procs"
)

// DefaultJobElements is the number of elements one job compares: at most
// Workers jobs are in memory at once, each holding about 16 bytes per
// element (original, quantized and dequantized values), so the default
// bounds memory near Workers × 16 MiB.
const DefaultJobElements = 1 << 20

// denseUnit is the number of elements of a dense tensor whose error sums
// are added up together (see acc); jobs are whole units.
const denseUnit = 1 << 16

// Options controls Compare. The zero value uses every CPU.
type Options struct {
	// Workers is the number of goroutines comparing in parallel. Zero
	// means procs.CPUs() (the CPUs the process may use); 1 compares every
	// job in order on the calling goroutine. The report does not depend on
	// it.
	Workers int
	// JobElements is the number of elements per job (rounded up, for a
	// quantized weight, to whole groups of 256 blocks). Zero means
	// DefaultJobElements.
	JobElements int
	// Progress, if not nil, is called after each job with the bytes of
	// ORIGINAL compared so far and in total (each byte counted once). It
	// is called from worker goroutines, possibly concurrently.
	Progress func(done, total int64)
}

// Compare checks the checkpoint at quantized against the checkpoint it was
// made from, at original (see the package documentation for what is
// checked). It returns an error, and no report, only if a checkpoint
// cannot be opened or read, or if original is itself quantized; every
// problem with the quantized checkpoint's contents is a finding in the
// report.
func Compare(ctx context.Context, original, quantized string, opts Options) (*Report, error) {
	orig, err := checkpoint.Open(original)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer orig.Close()
	quant, err := checkpoint.Open(quantized)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer quant.Close()
	return CompareCheckpoints(ctx, orig, quant, opts)
}

// CompareCheckpoints is Compare on checkpoints that are already open.
func CompareCheckpoints(ctx context.Context, orig, quant *checkpoint.Checkpoint, opts Options) (*Report, error) {
	if ws := checkpoint.FindPackedWeights(names(orig)); len(ws) > 0 {
		return nil, fmt.Errorf("verify: %s: the original checkpoint is quantized (tensor %q is a packed 4-bit weight)", orig.Path, ws[0].Name)
	}
	// Which weights were quantized transposed comes from formats/arch,
	// by the quantized checkpoint's config.json, else the original's; an
	// architecture that transformers cannot quantize is refused.
	a, err := dequant.Architecture(quant)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if oa, err := dequant.Architecture(orig); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	} else if a == nil {
		a = oa
	}
	v := &verifier{jobElems: int64(opts.JobElements)}
	if v.jobElems <= 0 {
		v.jobElems = DefaultJobElements
	}
	rep := &Report{Original: orig.Path, Quantized: quant.Path}

	// Sort the quantized checkpoint's tensors into packed weights, their
	// companions, and dense tensors.
	packed := map[string]*TensorReport{}
	companion := map[string]bool{}
	var weights []*dequant.Weight
	// A broken 4-bit weight (what audit calls an error: formats/bnb's
	// judgement, through dequant.LoadWeight and CheckOrphans) cannot be
	// measured: it is an error, not a finding.
	pws := checkpoint.FindPackedWeights(names(quant))
	if err := dequant.CheckOrphans(quant, pws); err != nil {
		return nil, weightError(err)
	}
	for _, pw := range pws {
		for _, c := range pw.Companions {
			companion[c] = true
		}
		tr := &TensorReport{Name: pw.Name, Kind: KindQuantized, QuantType: pw.QuantType}
		packed[pw.Name] = tr
		w, err := dequant.LoadWeight(quant, pw)
		if err != nil {
			return nil, weightError(err)
		} else if shape, transposed, err := dequant.SourceShape(a, w); err != nil {
			tr.fail(StatusInvalid, "%v", err)
		} else {
			weights = append(weights, w)
			tr.fill(w)
			tr.Shape, tr.Transposed = shape, transposed
		}
	}
	byName := map[string]*dequant.Weight{}
	for _, w := range weights {
		byName[w.Name] = w
	}

	for _, o := range orig.Tensors() {
		if tr, ok := packed[o.Name]; ok {
			rep.Tensors = append(rep.Tensors, tr)
			if w := byName[o.Name]; w != nil && tr.Status == StatusOK {
				v.planQuantized(tr, o, w)
			}
			continue
		}
		tr := &TensorReport{Name: o.Name, Kind: KindDense, OrigDType: o.DType.String(), Shape: o.Shape, Elements: o.NumElements()}
		rep.Tensors = append(rep.Tensors, tr)
		q, ok := quant.Tensor(o.Name)
		if !ok || companion[o.Name] {
			tr.fail(StatusMissing, "not in the quantized checkpoint")
			continue
		}
		v.planDense(tr, o, q)
	}
	for _, q := range quant.Tensors() {
		if _, ok := orig.Tensor(q.Name); ok || companion[q.Name] {
			continue
		}
		tr := packed[q.Name]
		if tr == nil {
			tr = &TensorReport{Name: q.Name, Kind: KindDense, DType: q.DType.String(), Shape: q.Shape, Elements: q.NumElements()}
		}
		tr.fail(StatusExtra, "not in the original checkpoint")
		rep.Tensors = append(rep.Tensors, tr)
	}

	if err := v.run(ctx, opts.Workers, opts.Progress); err != nil {
		return nil, err
	}
	for _, tr := range rep.Tensors {
		tr.finish()
	}
	rep.summarize()
	return rep, nil
}

func names(c *checkpoint.Checkpoint) []string {
	ts := c.Tensors()
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	return out
}

// fill copies a weight's quant state into its report.
func (tr *TensorReport) fill(w *dequant.Weight) {
	st := w.State
	tr.QuantType = st.QuantType.String()
	tr.Blocksize = st.Blocksize
	tr.DoubleQuant = st.DoubleQuant
	tr.DType = w.DType.String()
	tr.Shape = st.Shape
	tr.Elements = w.NumElements()
}

// fail marks tr as failed with status s, keeping the first message.
func (tr *TensorReport) fail(s Status, format string, args ...any) {
	if tr.Status == StatusOK || tr.Status == s {
		tr.Status = s
		if tr.Message == "" {
			tr.Message = fmt.Sprintf(format, args...)
		}
	}
}

// A job compares one range of one tensor. Its result goes to stats, which
// are merged into the tensor's report in job order, so the report does not
// depend on scheduling.
type job struct {
	tr    *TensorReport
	bytes int64 // of the original, for progress
	run   func(*scratch, *acc) error
	stats acc
}

type verifier struct {
	jobElems int64
	jobs     []*job
}

func (v *verifier) add(tr *TensorReport, bytes int64, run func(*scratch, *acc) error) {
	v.jobs = append(v.jobs, &job{tr: tr, bytes: bytes, run: run})
}

// scratch holds one worker's buffers.
type scratch struct {
	raw, raw2, raw3 []byte
	x, y            []float32
	blocks          dequant.Blocks
}

func newScratch() *scratch { return new(scratch) }

// run runs the planned jobs on the given number of workers (zero: all
// CPUs) and merges their results. The first error stops the others and
// is returned.
func (v *verifier) run(ctx context.Context, workers int, progress func(done, total int64)) error {
	if workers <= 0 {
		workers = procs.CPUs()
	}
	var total int64
	for _, j := range v.jobs {
		total += j.bytes
	}
	var done atomic.Int64
	err := jobs.Run(ctx, workers, 2*workers, slices.Values(v.jobs), newScratch, func(_ context.Context, s *scratch, j *job) error {
		if err := j.run(s, &j.stats); err != nil {
			return err
		}
		if progress != nil {
			progress(done.Add(j.bytes), total)
		}
		return nil
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("verify: interrupted: %w", ctx.Err())
	}
	if err != nil {
		return err
	}
	for _, j := range v.jobs {
		j.tr.acc.merge(&j.stats)
	}
	return nil
}

// planDense plans the comparison of a dense tensor of the original with
// the tensor of the same name in the quantized checkpoint: after casting
// the original to the quantized tensor's dtype, the bytes must be equal.
func (v *verifier) planDense(tr *TensorReport, o, q checkpoint.Tensor) {
	tr.DType = q.DType.String()
	if !slices.Equal(o.Shape, q.Shape) {
		tr.fail(StatusInvalid, "shape %v, original %v", q.Shape, o.Shape)
		return
	}
	floats := o.DType.IsFloat() && q.DType.IsFloat() && q.DType != dtype.F64
	if o.DType != q.DType && !floats {
		tr.fail(StatusMismatch, "dtype %v cannot be compared with the original's %v", q.DType, o.DType)
		return
	}
	n := o.NumElements()
	per := (v.jobElems + denseUnit - 1) / denseUnit * denseUnit
	for e0 := int64(0); e0 < n; e0 += per {
		cnt := min(per, n-e0)
		v.add(tr, cnt*int64(o.DType.Size()), func(s *scratch, a *acc) error {
			for u := int64(0); u < cnt; u += denseUnit {
				if err := compareDense(s, a, o, q, e0+u, min(denseUnit, cnt-u), floats); err != nil {
					return err
				}
				a.cut()
			}
			return nil
		})
	}
}

func compareDense(s *scratch, a *acc, o, q checkpoint.Tensor, e0, cnt int64, floats bool) error {
	osz, qsz := int64(o.DType.Size()), int64(q.DType.Size())
	s.raw = jobs.Grow(s.raw, int(cnt*osz))
	s.raw2 = jobs.Grow(s.raw2, int(cnt*qsz))
	if err := readAt(o, s.raw, e0*osz); err != nil {
		return err
	}
	if err := readAt(q, s.raw2, e0*qsz); err != nil {
		return err
	}
	want := s.raw // the original in the quantized tensor's dtype
	if o.DType != q.DType {
		// Compare encodings, so that the sign of zero and NaN payloads
		// count.
		s.x = jobs.Grow(s.x, int(cnt))
		cast.Decode(s.x, s.raw, o.DType, q.DType)
		s.raw3 = jobs.Grow(s.raw3, int(cnt*qsz))
		cast.Encode(s.raw3, s.x, q.DType)
		want = s.raw3
	}
	a.n += cnt
	if bytes.Equal(want, s.raw2) {
		return nil // identical: no error to measure
	}
	a.n -= cnt
	if !floats {
		for i := int64(0); i < cnt; i++ {
			if !bytes.Equal(want[i*qsz:(i+1)*qsz], s.raw2[i*qsz:(i+1)*qsz]) {
				a.differ(e0 + i)
			}
		}
		a.n += cnt
		return nil
	}
	s.x = jobs.Grow(s.x, int(cnt))
	s.y = jobs.Grow(s.y, int(cnt))
	cast.Decode(s.x, want, q.DType, q.DType)
	cast.Decode(s.y, s.raw2, q.DType, q.DType)
	for i := int64(0); i < cnt; i++ {
		if !bytes.Equal(want[i*qsz:(i+1)*qsz], s.raw2[i*qsz:(i+1)*qsz]) {
			a.differ(e0 + i)
		}
		a.add(float64(s.x[i]), float64(s.y[i]))
	}
	return nil
}

// planQuantized plans the comparison of a packed 4-bit weight with the
// original tensor it was made from.
func (v *verifier) planQuantized(tr *TensorReport, o checkpoint.Tensor, w *dequant.Weight) {
	tr.OrigDType = o.DType.String()
	if !slices.Equal(o.Shape, tr.Shape) {
		if tr.Transposed {
			tr.fail(StatusInvalid, "quant-state shape %v (a Conv1D weight, quantized transposed), original %v, want %v", w.State.Shape, o.Shape, tr.Shape)
		} else if len(o.Shape) == 2 && len(tr.Shape) == 2 && o.Shape[0] == tr.Shape[1] && o.Shape[1] == tr.Shape[0] {
			tr.fail(StatusInvalid, "quant-state shape %v, original %v: its transpose, as a GPT-2 style Conv1D weight is quantized, but no config.json names an architecture that says so", w.State.Shape, o.Shape)
		} else {
			tr.fail(StatusInvalid, "quant-state shape %v, original %v", w.State.Shape, o.Shape)
		}
		return
	}
	if !o.DType.IsFloat() {
		tr.fail(StatusInvalid, "the original is %v, not a float tensor", o.DType)
		return
	}
	unit := int64(bnb.NestedBlocksize)
	per := max(unit, v.jobElems/int64(w.State.Blocksize)/unit*unit)
	m := newMeasure(w)
	m.orig = o.SectionReader()
	if tr.Transposed {
		// Read the original [in, out] as the [out, in] that was quantized.
		m.orig = &transpose.Reader{Src: m.orig, Shape: transpose.Shape{Rows: o.Shape[0], Cols: o.Shape[1], Size: int64(o.DType.Size())}}
	}
	bs := int64(w.State.Blocksize)
	for b0 := int64(0); b0 < w.NumBlocks(); b0 += per {
		elems := min(per*bs, o.NumElements()-b0*bs)
		v.add(tr, elems*int64(o.DType.Size()), func(s *scratch, a *acc) error {
			return m.blocks(s, a, o, b0, per)
		})
	}
}

// readAt reads len(p) bytes of t at offset off.
func readAt(t checkpoint.Tensor, p []byte, off int64) error {
	if _, err := t.SectionReader().ReadAt(p, off); err != nil {
		return fmt.Errorf("verify: %s: tensor %q: %w", t.Shard.Path, t.Name, err)
	}
	return nil
}

// summarize sorts the tensors worst first and computes the totals.
func (r *Report) summarize() {
	var all acc
	t := &r.Totals
	for _, tr := range r.Tensors {
		t.Tensors++
		switch {
		case tr.Status == StatusMissing:
			t.Missing++
		case tr.Status == StatusExtra:
			t.Extra++
		}
		if tr.Status != StatusOK {
			t.Failed++
		}
		if tr.Kind == KindQuantized {
			t.Quantized++
			if tr.Status != StatusMissing && tr.Status != StatusExtra {
				all.mergeErrors(&tr.acc)
			}
		} else {
			t.Dense++
		}
	}
	t.Elements = all.n
	t.MaxAbsError, t.RMSE, t.SNR = Float(all.maxErr), Float(all.rmse()), all.snr()
	// Failures first, the furthest out of bounds first; then quantized
	// weights by increasing SNR; then dense tensors.
	slices.SortStableFunc(r.Tensors, func(a, b *TensorReport) int {
		if c := cmp.Compare(a.Status.rank(), b.Status.rank()); c != 0 {
			return c
		}
		if a.Status != StatusOK {
			return cmp.Or(cmp.Compare(b.BoundRatio, a.BoundRatio), cmp.Compare(a.Name, b.Name))
		}
		return cmp.Or(
			cmp.Compare(a.Kind.rank(), b.Kind.rank()),
			cmp.Compare(float64(a.SNR), float64(b.SNR)),
			cmp.Compare(a.Name, b.Name),
		)
	})
}

// finish turns a tensor's accumulated statistics into its report fields.
func (tr *TensorReport) finish() {
	a := &tr.acc
	tr.MaxAbsError, tr.RMSE, tr.SNR = Float(a.maxErr), Float(a.rmse()), a.snr()
	if tr.Kind == KindDense {
		tr.Differing = a.diff
		if a.diff > 0 {
			tr.fail(StatusMismatch, "%d of %d elements differ after casting the original to %s (first at element %d)", a.diff, a.n, tr.DType, a.firstDiff)
		}
		if a.n == 0 && tr.Status == StatusOK {
			tr.SNR = Decibels(math.Inf(1))
		}
		return
	}
	tr.OutOfBounds, tr.BadAbsmax, tr.NonFinite = a.out, a.badBlocks, a.nonFinite
	tr.BoundRatio = Float(a.worst)
	switch {
	case a.badBlocks > 0:
		tr.fail(StatusOutOfBounds, "%d of %d block absmax values off by more than their rounding allows (first: block %d, absmax %g, want %g)",
			a.badBlocks, bnb.NumBlocks(tr.Elements, max(tr.Blocksize, 1)), a.firstBadBlock, a.badGot, a.badWant)
	case a.out > 0:
		tr.fail(StatusOutOfBounds, "%d of %d elements out of bounds (first: element %d, error %.4g > bound %.4g)",
			a.out, a.n+a.nonFinite, a.firstOut, a.outErr, a.outBound)
	}
}

// weightError turns an error of dequant.LoadWeight into verify's.
func weightError(err error) error {
	var we *dequant.WeightError
	if errors.As(err, &we) {
		return fmt.Errorf("verify: %s: tensor %q: %s", we.Path, we.Tensor, we.Msg)
	}
	return fmt.Errorf("verify: %w", err)
}
