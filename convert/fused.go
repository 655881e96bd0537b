package convert

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/safetensors"
)

// One pass instead of two.
//
// With double quantization the quant-state JSON of a weight prints its
// nested offset, the mean of its absmax values, and the JSON's length moves
// every byte after it in the file. Without more knowledge the weights are
// read twice: a statistics pass finds every offset, the file is laid out,
// and a quantization pass reads each weight again to write its codes.
//
// Usually more is known. A JSON is 3 to 24 bytes longer than with an
// offset of 0, so the header of a file (the offsets' digits, the padding to
// 8 bytes) nearly always comes out the same whatever the statistics find;
// placeEarly's shortest and longest layouts tell. Where they agree, every
// tensor's offset is its offset in the shortest layout plus the lengthening
// of the JSONs before it in the file. Such a file is fused: its weights are
// handed out in file order and read once. A job quantizes its elements into
// packed codes and the absmax values of its blocks (kept, per weight, until
// its last job), and writes the codes as soon as the JSONs before them are
// known, which they are by then, or nearly: they belong to the weights
// handed out before. A job that finds them not yet known leaves its codes
// to be written when they are (deferData), and goes on with the next job.
// A weight's last job computes the mean and its JSON (publishing its
// length); the double quantization of its absmax values follows once the
// JSONs before it are known. The header is written once every JSON of the file is known, and
// layout checks every offset against the exact layout.

// A fusedFile tracks, for one fused output file, which quant-state JSONs
// are known: q numbers the file's quant-state entries in file order, and
// the offsets of all tensors up to the q-th follow from the first q
// lengths.
type fusedFile struct {
	short []int64 // [q]: the JSON's length with an offset of 0

	mu       sync.Mutex
	cond     sync.Cond
	pending  []pendingWrite // deferred writes, waiting for their JSONs
	known    []bool         // [q]: the JSON's length is known
	longer   []int64        // [q]: its length less short[q]
	failed   bool           // the run is ending: waiters give up
	prefix   atomic.Int32
	deltaSum []int64 // [q]: sum of longer[:q]; read once prefix >= q
}

func newFusedFile(short []int64) *fusedFile {
	f := &fusedFile{short: short, known: make([]bool, len(short)), longer: make([]int64, len(short)), deltaSum: make([]int64, len(short)+1)}
	f.cond.L = &f.mu
	return f
}

// offset returns the offset of a tensor at lo in the shortest layout with
// q quant-state entries before it, waiting until their lengths are known;
// it fails once the run has failed (abort).
func (f *fusedFile) offset(lo int64, q int32) (int64, error) {
	if f.prefix.Load() >= q {
		return lo + f.deltaSum[q], nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.prefix.Load() < q {
		if f.failed {
			return 0, errFusedAborted
		}
		f.cond.Wait()
	}
	return lo + f.deltaSum[q], nil
}

// errFusedAborted is what a write waiting for a JSON returns once the run
// has failed; the run reports the failure's own error.
var errFusedAborted = fmt.Errorf("convert: run stopped")

// A pendingWrite is a write deferred until the first q JSONs of its file
// are known; run does it on a worker.
type pendingWrite struct {
	q   int32
	run func(w *worker) error
}

// publish records that the q-th JSON is n bytes long, and returns the
// deferred writes whose JSONs are now all known.
func (f *fusedFile) publish(q int32, n int64) []pendingWrite {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.known[q] = true
	f.longer[q] = n - f.short[q]
	p := f.prefix.Load()
	for int(p) < len(f.known) && f.known[p] {
		f.deltaSum[p+1] = f.deltaSum[p] + f.longer[p]
		p++
	}
	f.prefix.Store(p) // after deltaSum: offset reads it once it sees p
	f.cond.Broadcast()
	var ready []pendingWrite
	f.pending = slices.DeleteFunc(f.pending, func(w pendingWrite) bool {
		if w.q <= p {
			ready = append(ready, w)
			return true
		}
		return false
	})
	return ready
}

// deferWrite queues pw unless its JSONs are already known; it reports
// whether it did.
func (f *fusedFile) deferWrite(pw pendingWrite) bool {
	if f.prefix.Load() >= pw.q {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.prefix.Load() >= pw.q {
		return false
	}
	f.pending = append(f.pending, pw)
	return true
}

// abort wakes the waiters for good.
func (f *fusedFile) abort() {
	f.mu.Lock()
	f.failed = true
	f.cond.Broadcast()
	f.mu.Unlock()
}

// layoutBounds are the shortest and longest layouts of a file whose
// JSON lengths are not known yet (every JSON at its shortest, and at its
// longest), with the entries in layout order.
type layoutBounds struct {
	lo, hi         *safetensors.Layout
	loRefs, hiRefs []entryRef
}

// fixedHeader reports whether the file's header, so the start of its data,
// is the same whatever the JSON lengths.
func (b *layoutBounds) fixedHeader() bool {
	return b.lo.DataOffset() == b.hi.DataOffset() && slices.Equal(b.loRefs, b.hiRefs)
}

// setupFused decides which output files are fused and prepares them: a
// file of this run, with double quantization, whose header is fixed, and
// each of whose weights has all its entries in it. It sets r.fused,
// r.fusedQ (the q of each entry), r.fusedOf and the entries' offsets in
// the shortest layout, and reorders writeItems so that the items of each
// fused file are handed out in file order (in the places their items had).
func (r *runner) setupFused(bounds map[int]*layoutBounds, writeItems []*item) error {
	p := r.p
	if !r.s.doubleQuant || (r.s.hooks != nil && r.s.hooks.twoPass) {
		return nil
	}
	r.fused = make([]*fusedFile, len(p.Files))
	r.fusedQ = make([]int32, len(r.off))
	r.fusedOf = make([]int32, p.numQuantize)
	for i := range r.fusedOf {
		r.fusedOf[i] = -1
	}
	// A weight with entries in several files, or outside this run,
	// keeps the two passes, and so does its file.
	split := make([]bool, len(p.Files))
	for _, it := range writeItems {
		if !it.quantize {
			continue
		}
		files := r.itemFiles(it)
		if len(files) != 1 || len(files) != len(itemFilesAll(it)) {
			for _, fi := range itemFilesAll(it) {
				split[fi] = true
			}
		}
	}
	pos := make(map[*item]int) // a fused file's item: its data entry's place in the layout
	for fi, b := range bounds {
		ok := !split[fi] && b.fixedHeader()
		if h := r.s.hooks; h != nil && h.fused != nil {
			if err := h.fused(p.Files[fi].Name, ok); err != nil {
				return err
			}
		}
		if !ok {
			continue
		}
		var short []int64
		for i, ref := range b.loRefs {
			it := p.items[ref.item]
			k := int(it.first) + int(ref.entry)
			r.off[k] = b.lo.DataOffset() + b.lo.Begin[i]
			r.fusedQ[k] = int32(len(short))
			switch it.entries[ref.entry].kind {
			case entryData:
				pos[it] = i
			case entryQuantState:
				r.fusedOf[it.qi] = int32(fi)
				short = append(short, int64(len(p.quantState(it, 0).MarshalPython())))
			}
		}
		r.fused[fi] = newFusedFile(short)
	}
	// Hand out the fused files' items in file order, in the slots they
	// held among the others.
	var slots []int
	var items []*item
	for i, it := range writeItems {
		if _, ok := pos[it]; ok && !r.early[it.index] {
			slots = append(slots, i)
			items = append(items, it)
		}
	}
	slices.SortStableFunc(items, func(a, b *item) int {
		if fa, fb := a.entries[0].file, b.entries[0].file; fa != fb {
			return int(fa - fb)
		}
		return pos[a] - pos[b]
	})
	for i, s := range slots {
		writeItems[s] = items[i]
	}
	return nil
}

// itemFilesAll returns the output files of it, of this run or not.
func itemFilesAll(it *item) []int {
	var fs []int
	for i := range it.entries {
		if f := int(it.entries[i].file); !slices.Contains(fs, f) {
			fs = append(fs, f)
		}
	}
	return fs
}

// fusedItem reports whether it is handed out as an item of a fused file:
// it writes only to fused files and is not placed early.
func (r *runner) fusedItem(it *item) bool {
	if r.fused == nil || r.early[it.index] || len(it.entries) == 0 {
		return false
	}
	for i := range it.entries {
		if r.fused[it.entries[i].file] == nil {
			return false
		}
	}
	return true
}

// fusedFileOf returns the fused file of a quantized item, or nil.
func (r *runner) fusedFileOf(it *item) *fusedFile {
	if r.fusedOf == nil || it.qi < 0 || r.fusedOf[it.qi] < 0 {
		return nil
	}
	return r.fused[r.fusedOf[it.qi]]
}

// abortFused wakes every write waiting for a JSON once ctx is done.
func (r *runner) abortFused(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		for _, f := range r.fused {
			if f != nil {
				f.abort()
			}
		}
	})
}

// deferData queues the write of a fused job's packed codes (w.packed) if
// the JSONs before them are not known yet, handing the buffer over (the
// worker gets another) and counting the write as a part of the item that
// is still outstanding; it reports whether it did. Writes only wait for
// the weights handed out before, so a worker never waits at a weight's
// start for the last jobs of the weight before it.
func (r *runner) deferData(w *worker, j job) bool {
	if r.deferredBufs.Load() >= int64(maxDeferred*r.s.workers) {
		return false // the write waits instead (fusedFile.offset)
	}
	it := j.it
	var k int
	for i := range it.entries {
		if it.entries[i].kind == entryData {
			k = int(it.first) + i
		}
	}
	f := r.fused[it.entries[k-int(it.first)].file]
	buf := w.packed
	j.st.outstanding.Add(1)
	queued := f.deferWrite(pendingWrite{q: r.fusedQ[k], run: func(w *worker) error {
		if err := r.writeEntry(it, entryData, j.start/2, buf); err != nil {
			return err
		}
		r.writeback(it, entryData, j.start/2, int64(len(buf)))
		r.putPacked(buf)
		return r.settle(j)
	}})
	if !queued {
		j.st.outstanding.Add(-1)
		return false
	}
	n := r.deferredBufs.Add(1)
	if h := r.s.hooks; h != nil && h.deferred != nil {
		h.deferred(it.src.Name, n)
	}
	w.packed = r.getPacked()
	return true
}

// settle counts one of the outstanding writes of j's fused weight as done;
// after the last the item is done.
func (r *runner) settle(j job) error {
	if j.st.outstanding.Add(-1) != 0 {
		return nil
	}
	return r.itemDone(j.it)
}

// queueReady adds deferred writes whose JSONs are known to the ready
// list.
func (r *runner) queueReady(ws []pendingWrite) {
	if len(ws) == 0 {
		return
	}
	r.packedMu.Lock()
	r.readyWrites = append(r.readyWrites, ws...)
	r.packedMu.Unlock()
}

// drainReady does ready deferred writes, one at a time, until none is
// left (the other workers take from the same list, so that the writes a
// JSON lets go are spread over them).
func (r *runner) drainReady(w *worker) error {
	for {
		r.packedMu.Lock()
		n := len(r.readyWrites)
		if n == 0 {
			r.packedMu.Unlock()
			return nil
		}
		pw := r.readyWrites[n-1]
		r.readyWrites = r.readyWrites[:n-1]
		r.packedMu.Unlock()
		if err := pw.run(w); err != nil {
			return err
		}
	}
}

// getPacked returns a packed-codes buffer for a worker whose own went
// with a deferred write; putPacked keeps a few for reuse.
func (r *runner) getPacked() []byte {
	r.packedMu.Lock()
	defer r.packedMu.Unlock()
	if n := len(r.packedFree); n > 0 {
		b := r.packedFree[n-1]
		r.packedFree = r.packedFree[:n-1]
		return b
	}
	return nil // jobs.Grow makes one
}

func (r *runner) putPacked(b []byte) {
	r.deferredBufs.Add(-1)
	r.packedMu.Lock()
	defer r.packedMu.Unlock()
	if len(r.packedFree) < maxDeferred*r.s.workers {
		r.packedFree = append(r.packedFree, b)
	}
}

// maxDeferred bounds the deferred writes to this many per worker (each
// holds a job's packed codes, J/2 bytes: 8 MiB for 16 workers): past it a
// job waits for its JSONs instead. Unbounded, they peaked at 228 MiB RSS
// on the 16-core host (13.5 GB bf16, -j 16, 55 MiB without deferring): the
// window lets jobs run up to 8w+2 jobs ahead of the oldest weight.
const maxDeferred = 2

// entryOffset returns the offset in its file of entry j of it, waiting, in
// a fused file, until the JSONs before it are known.
func (r *runner) entryOffset(it *item, j int) (int64, error) {
	k := int(it.first) + j
	if r.fused != nil {
		if f := r.fused[it.entries[j].file]; f != nil {
			return f.offset(r.off[k], r.fusedQ[k])
		}
	}
	return r.off[k], nil
}

// finishFused ends the computing of a fused weight once all its jobs have
// quantized their blocks: the nested offset and the quant-state JSON,
// published at once, so that the writes after it in the file can go (and
// laying out the file once it is the last). Its remaining writes (the
// double quantization of its absmax values, the code books, the JSON)
// wait for the JSONs before it like its codes do: done now if they are
// known, else when they are (finishWrites).
func (r *runner) finishFused(w *worker, j job, f *fusedFile) error {
	it := j.it
	offset := bnb.CUDAMean(j.st.absmax)
	r.offset[it.qi] = offset
	r.qstate[it.qi] = r.p.quantState(it, offset).MarshalPython()
	close(r.statsReady[it.qi])
	var e *entry
	var q int32
	for i := range it.entries {
		if it.entries[i].kind == entryQuantState {
			e = &it.entries[i]
			q = r.fusedQ[int(it.first)+i]
			r.queueReady(f.publish(q, int64(len(r.qstate[it.qi]))))
		}
	}
	if r.pendingStats[e.file].Add(-1) == 0 {
		if err := r.fileReady(int(e.file)); err != nil {
			return err
		}
	}
	pw := pendingWrite{q: q, run: func(w *worker) error { return r.finishWrites(w, j) }}
	if f.deferWrite(pw) {
		return nil
	}
	return pw.run(w)
}

// finishWrites writes the rest of a fused weight once the JSONs before it
// are known: its absmax values double-quantized a piece at a time, the
// code books and its JSON.
func (r *runner) finishWrites(w *worker, j job) error {
	absmax := j.st.absmax
	const piece = 1 << 16 // blocks at a time: a multiple of the nested blocksize
	for b := 0; b < len(absmax); b += piece {
		if err := r.writeDoubleQuant(w, j.it, absmax[b:min(b+piece, len(absmax))], int64(b)); err != nil {
			return err
		}
	}
	r.putAbsmax(absmax)
	j.st.absmax = nil
	if err := r.finishQuant(j); err != nil {
		return err
	}
	return r.settle(j)
}
