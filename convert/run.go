package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/convert/internal/jobs"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// subChunk is the number of elements decoded to float32 at a time inside
// a job (a multiple of every blocksize), so that the float32 scratch of a
// worker stays at 256 KiB whatever the job size.
const subChunk = 1 << 16

// hooks lets tests inject failures into reads and writes.
type hooks struct {
	reader func(tensor string, r io.ReaderAt) io.ReaderAt
	writer func(file string, w io.WriterAt) io.WriterAt
	// crash skips all cleanup after an error, as if the process had
	// been killed.
	crash bool
}

// runner executes a plan: the statistics pass, the layout of the output
// files, and the quantization pass, writing every output tensor at its
// planned offset.
type runner struct {
	p      *Plan
	s      *settings
	src    []io.ReaderAt // per item: the tensor's bytes
	inPart []bool        // per output file: written by this run

	files   []*os.File    // per output file (nil if not in part)
	outs    []io.WriterAt // per output file: where writes go
	layouts []*safetensors.Plan
	off     [][]int64 // [item][entry]: absolute offset in the entry's file
	qstate  [][]byte  // per item: the quant-state JSON, once known
	offset  []float32 // per item: the nested offset found by the statistics pass

	done, total atomic.Int64

	// fileItems counts, per output file, the items of the quantization
	// pass that still have to write to it; at zero the file is complete
	// and fileDone is called (from the worker that finished it).
	fileItems []atomic.Int64
	fileDone  func(fi int) error
}

// itemState is the state of one item during a pass, shared by its jobs.
type itemState struct {
	remaining atomic.Int64
	absmax    []float32 // double quant: the whole tensor's absmax
}

// A job is a range of elements of one item.
type job struct {
	it       *item
	st       *itemState
	start, n int64
	stats    bool // statistics pass: absmax only
}

// worker holds one goroutine's buffers, reused from job to job.
type worker struct {
	raw    []byte
	vals   []float32
	packed []byte
	absmax []float32
	out    []byte
}

func (r *runner) newWorker() *worker {
	return &worker{vals: make([]float32, subChunk)}
}

// window is the number of jobs the dispatcher may run ahead of the oldest
// unfinished one.
func (r *runner) window() int { return 2*r.s.workers + 2 }

func (r *runner) srcName(it *item) string { return r.p.srcFiles[it.src.shard] }

func (r *runner) entryInPart(e *entry) bool { return r.inPart[e.file] }

func (r *runner) itemInPart(it *item) bool {
	for i := range it.entries {
		if r.inPart[it.entries[i].file] {
			return true
		}
	}
	return false
}

// passJobs yields the jobs of items, in order, allocating each item's
// shared state when its first job is handed out.
func (r *runner) passJobs(items []*item, stats bool) iter.Seq[*job] {
	return func(yield func(*job) bool) {
		for _, it := range items {
			n := it.numElements()
			if n == 0 {
				continue
			}
			chunk := int64(r.s.jobElems)
			if it.quantize {
				chunk = r.s.quantJobElems()
			}
			st := &itemState{}
			st.remaining.Store((n + chunk - 1) / chunk)
			if it.quantize && r.s.doubleQuant && (stats || r.needsDQ(it)) {
				st.absmax = make([]float32, it.numBlocks(r.s.blocksize))
			}
			for start := int64(0); start < n; start += chunk {
				if !yield(&job{it: it, st: st, start: start, n: min(chunk, n-start), stats: stats}) {
					return
				}
			}
		}
	}
}

// needsDQ reports whether the quantization pass must collect its whole
// absmax vector: it writes some double-quant statistic of it.
func (r *runner) needsDQ(it *item) bool {
	for _, k := range []entryKind{entryAbsmax, entryNestedAbsmax, entryQuantState} {
		if e := it.entry(k); e != nil && r.entryInPart(e) {
			return true
		}
	}
	return false
}

func (r *runner) addProgress(n int64) {
	d := r.done.Add(n)
	if r.s.progress != nil {
		r.s.progress(d, r.total.Load())
	}
}

// run converts the files of this part into dir.
func (r *runner) run(ctx context.Context, dir string) (err error) {
	p, s := r.p, r.s
	r.off = make([][]int64, len(p.items))
	r.qstate = make([][]byte, len(p.items))
	r.offset = make([]float32, len(p.items))

	// Which items each pass touches.
	var statItems, writeItems []*item
	for _, it := range p.items {
		if !r.itemInPart(it) {
			continue
		}
		writeItems = append(writeItems, it)
		r.total.Add(it.src.Size())
		if it.quantize {
			if s.doubleQuant {
				if r.entryInPart(it.entry(entryQuantState)) {
					statItems = append(statItems, it)
					r.total.Add(it.src.Size())
				}
			} else {
				r.qstate[it.index] = p.quantState(it, 0).MarshalPython()
			}
		}
	}

	// Pass 1: the mean of each double-quantized weight's absmax values,
	// which decides the length of its quant-state JSON.
	if err := jobs.Run(ctx, s.workers, r.window(), r.passJobs(statItems, true), r.newWorker, r.doJob); err != nil {
		return err
	}

	// Layout and creation of the output files.
	r.files = make([]*os.File, len(p.Files))
	r.outs = make([]io.WriterAt, len(p.Files))
	r.layouts = make([]*safetensors.Plan, len(p.Files))
	defer func() {
		for _, f := range r.files {
			if f != nil {
				f.Close()
			}
		}
	}()
	for fi := range p.Files {
		if !r.inPart[fi] {
			continue
		}
		if err := r.layout(fi); err != nil {
			return err
		}
		if err := r.create(fi, dir); err != nil {
			return err
		}
	}

	// Pass 2: quantize and write. A file is finished when the last item
	// writing to it is.
	r.fileItems = make([]atomic.Int64, len(p.Files))
	for _, it := range writeItems {
		if it.numElements() == 0 {
			continue
		}
		for _, fi := range r.itemFiles(it) {
			r.fileItems[fi].Add(1)
		}
	}
	for fi := range p.Files {
		if r.inPart[fi] && r.fileItems[fi].Load() == 0 {
			if err := r.finishFile(fi); err != nil {
				return err
			}
		}
	}
	return jobs.Run(ctx, s.workers, r.window(), r.passJobs(writeItems, false), r.newWorker, r.doJob)
}

// itemFiles returns the output files of this run that it writes to.
func (r *runner) itemFiles(it *item) []int {
	var fs []int
	for i := range it.entries {
		if f := it.entries[i].file; r.inPart[f] && !slices.Contains(fs, f) {
			fs = append(fs, f)
		}
	}
	return fs
}

// itemDone counts a finished item against its files.
func (r *runner) itemDone(it *item) error {
	for _, fi := range r.itemFiles(it) {
		if r.fileItems[fi].Add(-1) == 0 {
			if err := r.finishFile(fi); err != nil {
				return err
			}
		}
	}
	return nil
}

// finishFile syncs and closes a complete output file and reports it.
func (r *runner) finishFile(fi int) error {
	f := r.files[fi]
	r.files[fi] = nil
	name := r.p.Files[fi].Name
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("convert: %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("convert: %s: %w", name, err)
	}
	if r.fileDone != nil {
		return r.fileDone(fi)
	}
	return nil
}

// layout computes the exact layout of output file fi; every quant-state
// JSON of the file must be known.
func (r *runner) layout(fi int) error {
	fp := &r.p.Files[fi]
	specs := make([]safetensors.TensorSpec, 0, len(fp.entries))
	byName := make(map[string]entryRef, len(fp.entries))
	for _, ref := range fp.entries {
		it := r.p.items[ref.item]
		e := &it.entries[ref.entry]
		shape := e.shape
		if e.kind == entryQuantState {
			q := r.qstate[it.index]
			if q == nil {
				return fmt.Errorf("convert: internal error: quant state of %q unknown at layout", it.src.Name)
			}
			shape = []int64{int64(len(q))}
			e.shape = shape
		}
		specs = append(specs, safetensors.TensorSpec{Name: e.name, DType: e.dtype, Shape: shape})
		byName[e.name] = ref
	}
	plan, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
	if err != nil {
		return fmt.Errorf("convert: %s: %w", fp.Name, err)
	}
	for _, t := range plan.Tensors {
		ref := byName[t.Name]
		offs := r.off[ref.item]
		if offs == nil {
			offs = make([]int64, len(r.p.items[ref.item].entries))
			r.off[ref.item] = offs
		}
		offs[ref.entry] = plan.DataOffset() + t.Begin
	}
	r.layouts[fi] = plan
	return nil
}

// create creates output file fi in dir with its header, at its final size.
func (r *runner) create(fi int, dir string) error {
	name := r.p.Files[fi].Name
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	r.files[fi] = f
	var w io.WriterAt = f
	if r.s.hooks != nil && r.s.hooks.writer != nil {
		w = r.s.hooks.writer(name, f)
	}
	r.outs[fi] = w
	plan := r.layouts[fi]
	if _, err := w.WriteAt(plan.Header, 0); err != nil {
		return fmt.Errorf("convert: %s: writing header: %w", name, err)
	}
	if err := f.Truncate(plan.FileSize()); err != nil {
		return fmt.Errorf("convert: %s: %w", name, err)
	}
	return nil
}

// writeEntry writes b at byte offset at of entry k of it, if this run
// writes that entry's file.
func (r *runner) writeEntry(it *item, k entryKind, at int64, b []byte) error {
	for j := range it.entries {
		e := &it.entries[j]
		if e.kind != k {
			continue
		}
		if !r.inPart[e.file] {
			return nil
		}
		if _, err := r.outs[e.file].WriteAt(b, r.off[it.index][j]+at); err != nil {
			return fmt.Errorf("convert: %s: writing tensor %q: %w", r.p.Files[e.file].Name, e.name, err)
		}
		return nil
	}
	return fmt.Errorf("convert: internal error: %q has no entry of kind %d", it.src.Name, k)
}

// read reads the bytes of elements [start, start+n) of it into w.raw.
func (r *runner) read(w *worker, it *item, start, n int64) ([]byte, error) {
	size := int64(it.src.DType.Size())
	w.raw = jobs.Grow(w.raw, int(n*size))
	got, err := r.src[it.index].ReadAt(w.raw, start*size)
	if got == len(w.raw) {
		err = nil
	} else if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, fmt.Errorf("convert: %s: reading tensor %q: %w", r.srcName(it), it.src.Name, err)
	}
	return w.raw, nil
}

func (r *runner) nonFinite(it *item, index int64, v float32) error {
	return fmt.Errorf("convert: %s: tensor %q: element %d is %v after rounding to %v (NaN and Inf cannot be quantized faithfully; --allow-nonfinite quantizes anyway)",
		r.srcName(it), it.src.Name, index, v, it.dtype)
}

// doJob runs one job.
func (r *runner) doJob(ctx context.Context, w *worker, j *job) error {
	it := j.it
	raw, err := r.read(w, it, j.start, j.n)
	if err != nil {
		return err
	}
	switch {
	case j.stats:
		err = r.statsJob(w, j, raw)
	case it.quantize:
		err = r.quantJob(w, j, raw)
	default:
		err = r.keepJob(w, j, raw)
	}
	if err != nil {
		return err
	}
	r.addProgress(j.n * int64(it.src.DType.Size()))
	if j.st.remaining.Add(-1) == 0 {
		if j.stats {
			return r.finishStats(j)
		}
		if it.quantize {
			if err := r.finishQuant(j); err != nil {
				return err
			}
		}
		return r.itemDone(it)
	}
	return nil
}

// decode decodes sub-chunk [off, off+m) of a job's raw bytes to the
// float32 values that are quantized, and checks them.
func (r *runner) decode(w *worker, j *job, raw []byte, off, m int) ([]float32, error) {
	it := j.it
	size := it.src.DType.Size()
	vals := w.vals[:m]
	cast.Decode(vals, raw[off*size:], it.src.DType, it.dtype)
	if !r.s.allowNonFin {
		if i := firstNonFinite(vals); i >= 0 {
			return nil, r.nonFinite(it, j.start+int64(off+i), vals[i])
		}
	}
	return vals, nil
}

func (r *runner) statsJob(w *worker, j *job, raw []byte) error {
	bs := r.s.blocksize
	b0 := int(j.start / int64(bs))
	for off := 0; off < int(j.n); off += subChunk {
		m := min(subChunk, int(j.n)-off)
		vals, err := r.decode(w, j, raw, off, m)
		if err != nil {
			return err
		}
		blockAbsmax(j.st.absmax[b0+off/bs:], vals, bs)
	}
	return nil
}

func (r *runner) finishStats(j *job) error {
	it := j.it
	_, _, offset := bnb.DoubleQuant(j.st.absmax)
	j.st.absmax = nil
	r.offset[it.index] = offset
	r.qstate[it.index] = r.p.quantState(it, offset).MarshalPython()
	return nil
}

func (r *runner) quantJob(w *worker, j *job, raw []byte) error {
	it := j.it
	bs := r.s.blocksize
	nb := int(bnb.NumBlocks(j.n, bs))
	w.packed = jobs.Grow(w.packed, int(bnb.PackedBytes(j.n)))
	w.absmax = jobs.Grow(w.absmax, nb)
	for off := 0; off < int(j.n); off += subChunk {
		m := min(subChunk, int(j.n)-off)
		vals, err := r.decode(w, j, raw, off, m)
		if err != nil {
			return err
		}
		bnb.QuantizeBlocks(w.packed[off/2:], w.absmax[off/bs:], vals, bs, r.s.quant)
	}
	if err := r.writeEntry(it, entryData, j.start/2, w.packed); err != nil {
		return err
	}
	b0 := j.start / int64(bs)
	if r.s.doubleQuant {
		if j.st.absmax != nil {
			copy(j.st.absmax[b0:], w.absmax)
		}
		return nil
	}
	w.out = jobs.Grow(w.out, 4*nb)
	cast.Encode(w.out, w.absmax, dtype.F32)
	return r.writeEntry(it, entryAbsmax, 4*b0, w.out)
}

// finishQuant writes the per-tensor parts of a quantized weight once all
// its blocks are done: the code book, and with double quantization the
// 8-bit absmax codes, nested absmax and nested code book.
func (r *runner) finishQuant(j *job) error {
	it := j.it
	cb := bnb.CodeBook(r.s.quant)
	if err := r.writeEntry(it, entryQuantMap, 0, cast.F32Bytes(cb[:])); err != nil {
		return err
	}
	if r.s.doubleQuant && j.st.absmax != nil {
		codes, nested, offset := bnb.DoubleQuant(j.st.absmax)
		j.st.absmax = nil
		if qs := r.qstate[it.index]; qs != nil && math.Float32bits(offset) != math.Float32bits(r.offset[it.index]) {
			return fmt.Errorf("convert: internal error: tensor %q: statistics pass found nested offset %v, quantization %v", it.src.Name, r.offset[it.index], offset)
		}
		if err := r.writeEntry(it, entryAbsmax, 0, codes); err != nil {
			return err
		}
		if err := r.writeEntry(it, entryNestedAbsmax, 0, cast.F32Bytes(nested)); err != nil {
			return err
		}
		dm := bnb.DynamicMap()
		if err := r.writeEntry(it, entryNestedQuantMap, 0, cast.F32Bytes(dm[:])); err != nil {
			return err
		}
	}
	if qs := r.qstate[it.index]; qs != nil {
		return r.writeEntry(it, entryQuantState, 0, qs)
	}
	return nil
}

func (r *runner) keepJob(w *worker, j *job, raw []byte) error {
	it := j.it
	from, to := it.src.DType, it.dtype
	if from == to {
		return r.writeEntry(it, entryData, j.start*int64(to.Size()), raw)
	}
	fs, ts := from.Size(), to.Size()
	w.out = jobs.Grow(w.out, subChunk*ts)
	for off := 0; off < int(j.n); off += subChunk {
		m := min(subChunk, int(j.n)-off)
		vals := w.vals[:m]
		cast.Decode(vals, raw[off*fs:], from, from)
		cast.Encode(w.out, vals, to)
		if err := r.writeEntry(it, entryData, (j.start+int64(off))*int64(ts), w.out[:m*ts]); err != nil {
			return err
		}
	}
	return nil
}
