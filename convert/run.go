package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"runtime/debug"
	"runtime/trace"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/convert/internal/jobs"
	"github.com/qconv/qconv/convert/internal/outdir"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// subChunk is the number of elements a job reads and processes at a time
// (a multiple of every blocksize): 256 KiB of BF16 input, small enough to
// stay in a core's L2 cache between the read that copies it out of the
// page cache and the kernel that consumes it. A job (DefaultJobElements)
// is the unit of scheduling and of output writes, a sub-chunk that of
// reads.
const subChunk = 1 << 17

// hooks lets tests inject failures into reads and writes.
type hooks struct {
	reader func(tensor string, r io.ReaderAt) io.ReaderAt
	writer func(file string, w io.WriterAt) io.WriterAt
	// crash skips all cleanup after an error, as if the process had
	// been killed.
	crash bool
	// job is called when a job starts.
	job func(tensor string, stats bool)
	// install is outdir.InstallOptions.Step.
	install func(step string) error
	// twoPass keeps every file on the two passes (no fused files).
	twoPass bool
	// fused is told, per output file that waits for statistics, whether
	// it is fused; an error stops the run.
	fused func(file string, fused bool) error
	// deferred is called when a job of a fused file defers its write,
	// with the number of deferred writes outstanding.
	deferred func(tensor string, outstanding int64)
	// pread reads the input with pread only (no input mappings).
	pread bool
	// mappedRead is called for each read served by an input mapping.
	mappedRead func(tensor string)
}

// runner executes a plan: the statistics pass, the layout of the output
// files, and the quantization pass, writing every output tensor at its
// planned offset.
type runner struct {
	p      *Plan
	s      *settings
	src    func(*item) io.ReaderAt // a reader of the item's bytes (made per read)
	inPart []bool                  // per output file: written by this run
	// mapOf returns the mapping of the input file that holds the item's
	// bytes and their offset in it, or nil where the item is read with
	// pread (see inmap_linux.go); mapOf itself is nil for sources that
	// are not files on disk.
	mapOf  func(*item) (mem []byte, base int64)
	inMaps *inputMaps

	files   []*os.File    // per output file: open while being written, else nil
	writers []fileWriter  // per output file: its writer, while files[fi] is open
	outs    []io.WriterAt // per output file: where writes go (writers[fi], or a test's hook)
	layouts []*safetensors.Layout
	off     []int64   // [item.first+entry]: absolute offset in the entry's file
	qstate  [][]byte  // per item: the quant-state JSON, once known
	offset  []float32 // per item: the nested offset found by the statistics pass
	// statsReady is closed, per item of the statistics pass, once its
	// nested offset is known.
	statsReady []chan struct{}
	// early marks the kept items placed before the statistics pass (see
	// placeEarly): their offsets are set and their files created before
	// any job runs, and they are copied while the statistics pass runs.
	early []bool
	// fused holds, per output file, its fusedFile where it is written
	// in one pass (see fused.go), else nil; fusedQ gives, per entry of a
	// fused file, the number of quant-state entries before it, and
	// fusedOf, per quantized item, the index of its fused file or -1.
	// All nil without fused files.
	fused   []*fusedFile
	fusedQ  []int32
	fusedOf []int32
	// packedFree holds packed-codes buffers of deferred writes for reuse;
	// readyWrites holds the deferred writes whose JSONs are known, which
	// every worker takes from after each job (drainReady).
	packedMu     sync.Mutex
	packedFree   [][]byte
	deferredBufs atomic.Int64 // deferred writes not yet done
	readyWrites  []pendingWrite

	done, total atomic.Int64

	// absmaxFree holds the whole-tensor absmax vectors of finished items
	// for reuse by later ones.
	absmaxMu   sync.Mutex
	absmaxFree [][]float32
	// quantMap and nestedMap are the bytes of the quant_map and
	// nested_quant_map tensors, the same for every weight.
	quantMap, nestedMap []byte

	dir *outdir.Dir // where the output files are created
	// ready is closed, per output file, once the file is laid out and
	// created; pendingStats counts the items whose statistics it waits
	// for (those whose quant-state JSON it holds).
	ready        []chan struct{}
	pendingStats []atomic.Int64
	// fileItems counts, per output file, the items of the quantization
	// pass that still have to write to it; at zero the file is complete
	// and fileDone is called (from the worker that finished it) with the
	// file's size and CRC-32C (crcOK false if the CRC is unknown).
	fileItems []atomic.Int64
	fileDone  func(fi int, size int64, crc uint32, crcOK bool) error
	crcs      []crcRecorder // per output file: the CRCs of what was written
	order     *tensorOrder  // reports written items to Options.TensorDone; nil without it
}

// itemState is the state of one item during a pass, shared by its jobs.
type itemState struct {
	remaining atomic.Int64
	absmax    []float32 // statistics pass: the whole tensor's absmax
	// outstanding counts, for a weight of a fused file, its writes that
	// wait for JSONs (deferred codes, and its completion's); at zero the
	// item is done.
	outstanding atomic.Int64
}

// A job is a range of elements of one item. Jobs are passed by value (no
// allocation per job).
type job struct {
	it       *item
	st       *itemState
	start, n int64
	stats    bool // statistics pass: absmax only
}

// worker holds one goroutine's buffers, reused from job to job: the raw
// bytes of a sub-chunk, the packed codes and absmax values of a job, with
// double quantization their 8-bit codes and nested absmax values, and for
// kept tensors that change dtype the decoded values and their output
// bytes.
type worker struct {
	view   []byte // the pages populated by the last read through an input mapping
	viewAt int64  // view's offset in its mapping
	raw    []byte
	packed []byte
	absmax []float32
	codes  []byte
	nested []float32
	vals   []float32
	out    []byte
}

func (r *runner) newWorker() *worker { return new(worker) }

// getAbsmax returns a vector of n absmax values, reusing a freed one if
// one is large enough. Its contents are stale: every job overwrites its
// part.
func (r *runner) getAbsmax(n int64) []float32 {
	r.absmaxMu.Lock()
	defer r.absmaxMu.Unlock()
	for i, a := range r.absmaxFree {
		if int64(cap(a)) >= n {
			r.absmaxFree = slices.Delete(r.absmaxFree, i, i+1)
			return a[:n]
		}
	}
	return make([]float32, n)
}

// putAbsmax makes a vector of getAbsmax available again. At most maxFree
// are kept (the largest ones), so that the pool stays within the bound of
// live vectors that the job window sets.
func (r *runner) putAbsmax(a []float32) {
	const maxFree = 4
	r.absmaxMu.Lock()
	defer r.absmaxMu.Unlock()
	r.absmaxFree = append(r.absmaxFree, a)
	if len(r.absmaxFree) > maxFree {
		slices.SortFunc(r.absmaxFree, func(x, y []float32) int { return cap(y) - cap(x) })
		r.absmaxFree = r.absmaxFree[:maxFree]
	}
}

// window is the number of jobs the dispatcher may run ahead of the oldest
// unfinished one. It bounds the statistics pass's absmax vectors (the
// quantization pass keeps no per-tensor vector); 8 jobs per worker let
// the others go on while a few jobs wait (a buffered write waits for the
// file's lock, which the kernel takes for every write to the file).
func (r *runner) window() int { return 8*r.s.workers + 2 }

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

// itemJobs yields the jobs of one pass over it (none for an empty item),
// allocating the item's shared state first. It reports false if yield
// did.
func (r *runner) itemJobs(it *item, stats bool, yield func(job) bool) bool {
	n := it.numElements()
	if n == 0 {
		return true
	}
	chunk := int64(r.s.jobElems)
	if it.quantize {
		chunk = r.s.quantJobElems()
	}
	st := &itemState{}
	st.remaining.Store((n + chunk - 1) / chunk)
	if stats || (it.quantize && r.fusedFileOf(it) != nil) {
		st.absmax = r.getAbsmax(it.numBlocks(r.s.blocksize))
	}
	if !stats && it.quantize && r.fusedFileOf(it) != nil {
		st.outstanding.Store(1) // finishFused's writes
	}
	for start := int64(0); start < n; start += chunk {
		if !yield(job{it: it, st: st, start: start, n: min(chunk, n-start), stats: stats}) {
			return false
		}
	}
	return true
}

// jobs yields the jobs of both passes: the quantization jobs of the
// items in writeItems, in order, each once every output file it writes
// to is laid out, and before them the statistics jobs of the items in
// statItems (those whose quant-state JSON decides a layout), one output
// file ahead of the quantization jobs, so that workers compute the
// statistics of file k+1 while they quantize the tensors of file k, and
// the page cache likely still holds what the statistics pass read when it
// is read again. It stops early when ctx is cancelled.
//
// The kept items placed early (placeEarly) are handed out among the
// statistics jobs, in step with them by bytes, so that the output's first
// writes overlap the statistics pass's reads.
func (r *runner) jobs(ctx context.Context, statItems, writeItems []*item) iter.Seq[job] {
	return func(yield func(job) bool) {
		// The statistics jobs and the jobs of fused files' items pace
		// the early ones.
		var statTotal, earlyTotal float64
		for _, it := range statItems {
			statTotal += float64(it.src.Size())
		}
		for _, it := range writeItems {
			if r.fusedItem(it) {
				statTotal += float64(it.src.Size())
			}
		}
		for _, it := range writeItems {
			if r.early[it.index] {
				earlyTotal += float64(it.src.Size())
			}
		}
		early, stop := iter.Pull(func(yield func(job) bool) {
			for _, it := range writeItems {
				if r.early[it.index] && !r.itemJobs(it, false, yield) {
					return
				}
			}
		})
		defer stop()
		var statDone, earlyDone float64 // bytes handed out
		// earlyUpTo hands out early jobs while their bytes are below share
		// of earlyTotal: before each statistics job, share is that of
		// the statistics bytes up to and including it, so the last early
		// job goes out before the last statistics job.
		earlyUpTo := func(share float64) bool {
			for earlyDone < share*earlyTotal {
				j, ok := early()
				if !ok {
					return true
				}
				earlyDone += float64(j.n * int64(j.it.src.DType.Size()))
				if !yield(j) {
					return false
				}
			}
			return true
		}
		statYield := func(j job) bool {
			statDone += float64(j.n * int64(j.it.src.DType.Size()))
			return earlyUpTo(statDone/statTotal) && yield(j)
		}
		next := 0 // statItems[next:] have not been handed out
		for _, it := range writeItems {
			files := r.itemFiles(it)
			if len(files) == 0 || r.early[it.index] {
				continue
			}
			if r.fusedItem(it) {
				// No statistics, layout or JSON to wait for: its writes
				// wait for the JSONs before them (fusedFile.offset).
				if !r.itemJobs(it, false, statYield) {
					return
				}
				continue
			}
			last := slices.Max(files)
			for ; next < len(statItems) && int(statItems[next].entry(entryQuantState).file) <= last+1; next++ {
				if !r.itemJobs(statItems[next], true, statYield) {
					return
				}
			}
			if next == len(statItems) && !earlyUpTo(1) {
				return
			}
			for _, fi := range files {
				select {
				case <-r.ready[fi]:
				case <-ctx.Done():
					return
				}
			}
			if c := r.statsReadyOf(it); c != nil {
				select {
				case <-c:
				case <-ctx.Done():
					return
				}
			}
			if !r.itemJobs(it, false, yield) {
				return
			}
		}
		for _, it := range statItems[next:] {
			if !r.itemJobs(it, true, statYield) {
				return
			}
		}
		earlyUpTo(1)
	}
}

// needsDQ reports whether this run writes some double-quant statistic of
// it, so that its quantization jobs need its nested offset.
func (r *runner) needsDQ(it *item) bool {
	for _, k := range []entryKind{entryAbsmax, entryNestedAbsmax, entryQuantState} {
		if e := it.entry(k); e != nil && r.entryInPart(e) {
			return true
		}
	}
	return false
}

// qstateOf returns the quant-state JSON of it once known (nil for a
// kept tensor).
func (r *runner) qstateOf(it *item) []byte {
	if it.qi < 0 {
		return nil
	}
	return r.qstate[it.qi]
}

// statsReadyOf returns the channel closed when the statistics of it are
// known (nil for a kept tensor, or when there are none to wait for).
func (r *runner) statsReadyOf(it *item) chan struct{} {
	if it.qi < 0 {
		return nil
	}
	return r.statsReady[it.qi]
}

func (r *runner) addProgress(n int64) {
	d := r.done.Add(n)
	if r.s.progress != nil {
		r.s.progress(d, r.total.Load())
	}
}

// run converts the files of this part into dir.
func (r *runner) run(ctx context.Context, dir *outdir.Dir) (err error) {
	p, s := r.p, r.s
	nEntries := 0
	if n := len(p.items); n > 0 {
		nEntries = int(p.items[n-1].first) + len(p.items[n-1].entries)
	}
	r.off = make([]int64, nEntries)
	// Per 4-bit weight (item.qi), not per tensor.
	r.qstate = make([][]byte, p.numQuantize)
	r.offset = make([]float32, p.numQuantize)
	r.statsReady = make([]chan struct{}, p.numQuantize)
	r.early = make([]bool, len(p.items))
	cb := bnb.CodeBook(s.quant)
	r.quantMap = cast.F32Bytes(cb[:])
	dm := bnb.DynamicMap()
	r.nestedMap = cast.F32Bytes(dm[:])

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
				// The statistics pass finds the nested offset, which
				// the quant-state JSON prints and the quantization
				// jobs need to double-quantize their blocks.
				if r.needsDQ(it) {
					statItems = append(statItems, it)
					r.statsReady[it.qi] = make(chan struct{})
				}
			} else {
				r.qstate[it.qi] = p.quantState(it, 0).MarshalPython()
			}
		}
	}

	if s.tensorDone != nil {
		var reported []*item // the items this run writes to some file
		for _, it := range writeItems {
			if len(r.itemFiles(it)) > 0 {
				reported = append(reported, it)
			}
		}
		r.order = newTensorOrder(reported, func(it *item) {
			qstateLen := int64(-1)
			if q := r.qstateOf(it); q != nil {
				qstateLen = int64(len(q))
			}
			s.tensorDone(it.index, len(p.items), p.tensorPlan(it, qstateLen))
		})
	}

	// Output files are laid out once the statistics of the weights whose
	// quant-state JSON they hold are known (at once without double
	// quantization), by the worker that finishes the last of them. A file
	// is finished when the last item writing to it is.
	r.files = make([]*os.File, len(p.Files))
	r.writers = make([]fileWriter, len(p.Files))
	r.outs = make([]io.WriterAt, len(p.Files))
	r.layouts = make([]*safetensors.Layout, len(p.Files))
	r.crcs = make([]crcRecorder, len(p.Files))
	r.ready = make([]chan struct{}, len(p.Files))
	r.pendingStats = make([]atomic.Int64, len(p.Files))
	r.fileItems = make([]atomic.Int64, len(p.Files))
	r.dir = dir
	for fi := range p.Files {
		r.ready[fi] = make(chan struct{})
	}
	// Files still open here were not finished: on an error they are
	// removed (unless the test hook simulates a crash), so that the work
	// directory keeps only finished files.
	defer func() {
		for i, f := range r.files {
			if f == nil {
				continue
			}
			r.writers[i].close()
			f.Close()
			if err != nil && (s.hooks == nil || !s.hooks.crash) {
				r.dir.Remove(r.p.Files[i].Name)
			}
		}
	}()
	for _, it := range statItems {
		if e := it.entry(entryQuantState); r.entryInPart(e) {
			r.pendingStats[e.file].Add(1)
		}
	}
	for _, it := range writeItems {
		if it.numElements() == 0 {
			continue
		}
		for _, fi := range r.itemFiles(it) {
			r.fileItems[fi].Add(1)
		}
	}
	for fi := range p.Files {
		if r.inPart[fi] && r.pendingStats[fi].Load() == 0 {
			if err := r.fileReady(fi); err != nil {
				return err
			}
		}
	}
	reg := trace.StartRegion(ctx, "placeEarly")
	bounds, err := r.layoutBounds()
	if err == nil {
		err = r.placeEarly(writeItems, bounds)
	}
	if err == nil {
		err = r.setupFused(bounds, writeItems)
	}
	if err == nil {
		statItems = slices.DeleteFunc(statItems, func(it *item) bool { return r.fusedFileOf(it) != nil })
		err = r.openFused(bounds)
	}
	reg.End()
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer r.abortFused(ctx)()
	do := func(ctx context.Context, w *worker, j job) error {
		err := r.doJob(ctx, w, j)
		if err != nil {
			cancel(err)
		}
		return err
	}
	if err := jobs.Run(ctx, s.workers, r.window(), r.jobs(ctx, statItems, writeItems), r.newWorker, do); err != nil {
		return err
	}
	// The job stream stops early once ctx is cancelled, so a run that
	// returned nil may still have left files unfinished.
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	return nil
}

// fileReady lays out and creates output file fi, whose quant-state JSONs
// are all known, and lets the quantization jobs that write to it go. A
// file that no job writes to is finished at once.
func (r *runner) fileReady(fi int) error {
	defer trace.StartRegion(context.Background(), "layout").End()
	if err := r.layout(fi); err != nil {
		return err
	}
	if err := r.create(fi, r.dir); err != nil {
		return err
	}
	// Decide before the jobs are let go: once ready is closed, the last
	// item to finish may bring the count to zero and finish the file
	// itself, and the file must be finished exactly once.
	empty := r.fileItems[fi].Load() == 0
	close(r.ready[fi])
	if empty {
		return r.finishFile(fi)
	}
	return nil
}

// itemFiles returns the output files of this run that it writes to.
func (r *runner) itemFiles(it *item) []int {
	var fs []int
	for i := range it.entries {
		if f := int(it.entries[i].file); r.inPart[f] && !slices.Contains(fs, f) {
			fs = append(fs, f)
		}
	}
	return fs
}

// itemDone counts a finished item against its files.
func (r *runner) itemDone(it *item) error {
	if r.order != nil {
		r.order.finished(it)
	}
	for _, fi := range r.itemFiles(it) {
		if r.fileItems[fi].Add(-1) == 0 {
			if err := r.finishFile(fi); err != nil {
				return err
			}
		}
	}
	return nil
}

// finishFile syncs and closes a complete output file and reports it. A
// file that fails to be finished is left to run's cleanup.
func (r *runner) finishFile(fi int) error {
	defer trace.StartRegion(context.Background(), "finish").End()
	f := r.files[fi]
	name := r.p.Files[fi].Name
	// Every write to the file is done: unmap it before the fsync (the
	// pages stay dirty in the page cache, and fsync writes them).
	if err := r.writers[fi].close(); err != nil {
		return fmt.Errorf("convert: %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("convert: %s: %w", name, err)
	}
	if r.fileDone != nil {
		size := r.layouts[fi].FileSize()
		crc, ok := r.crcs[fi].sum(size)
		if err := r.fileDone(fi, size, crc, ok); err != nil {
			return err
		}
	}
	r.files[fi] = nil
	if err := f.Close(); err != nil {
		return fmt.Errorf("convert: %s: %w", name, err)
	}
	return nil
}

// plan lays out output file fi with quant-state JSONs of qlen bytes, and
// returns the entry of each of its tensors, in the layout's order. It
// holds no tensor list: the specs are made from the plan's entries as
// safetensors.NewLayout asks for them (the companions' names once).
func (r *runner) plan(fi int, qlen func(it *item) (int64, error)) (*safetensors.Layout, []entryRef, error) {
	fp := &r.p.Files[fi]
	names := make([]string, len(fp.entries))
	qlens := make([]int64, 0)
	qi := make([]int32, len(fp.entries)) // index into qlens of a quant state, else -1
	for k, ref := range fp.entries {
		it := r.p.items[ref.item]
		e := &it.entries[ref.entry]
		qi[k] = -1
		if e.kind != entryData {
			names[k] = r.p.entryName(it, e)
		}
		if e.kind == entryQuantState {
			n, err := qlen(it)
			if err != nil {
				return nil, nil, err
			}
			qi[k] = int32(len(qlens))
			qlens = append(qlens, n)
		}
	}
	spec := func(k int) safetensors.TensorSpec {
		ref := fp.entries[k]
		it := r.p.items[ref.item]
		e := &it.entries[ref.entry]
		t := safetensors.TensorSpec{Name: names[k], DType: e.dtype}
		if e.kind == entryData {
			t.Name = it.src.Name
		}
		if q := qi[k]; q >= 0 {
			t.Shape = qlens[q : q+1]
		} else {
			t.Shape = r.p.entryShape(it, e)
		}
		return t
	}
	l, err := safetensors.NewLayout(map[string]string{"format": "pt"}, len(fp.entries), spec)
	if err != nil {
		return nil, nil, fmt.Errorf("convert: %s: %w", fp.Name, err)
	}
	refs := make([]entryRef, len(l.Order))
	for i, k := range l.Order {
		refs[i] = fp.entries[k]
	}
	return l, refs, nil
}

// layout computes the exact layout of output file fi; every quant-state
// JSON of the file must be known. The offsets of early items were set by
// placeEarly and must come out the same.
func (r *runner) layout(fi int) error {
	l, refs, err := r.plan(fi, func(it *item) (int64, error) {
		q := r.qstateOf(it)
		if q == nil {
			return 0, fmt.Errorf("convert: internal error: quant state of %q unknown at layout", it.src.Name)
		}
		return int64(len(q)), nil
	})
	if err != nil {
		return err
	}
	var fused *fusedFile
	if r.fused != nil {
		fused = r.fused[fi]
	}
	for i, ref := range refs {
		it := r.p.items[ref.item]
		k := int(it.first) + int(ref.entry)
		off := l.DataOffset() + l.Begin[i]
		if fused != nil {
			// Jobs may still be writing: r.off keeps the shortest
			// layout's offsets, which the known JSONs correct.
			if got, err := fused.offset(r.off[k], r.fusedQ[k]); err != nil || got != off {
				return fmt.Errorf("convert: internal error: %s: tensor %q written at %d in one pass, laid out at %d (%v)", r.p.Files[fi].Name, r.p.entryName(it, &it.entries[ref.entry]), got, off, err)
			}
			continue
		}
		if r.early[ref.item] {
			if r.off[k] != off {
				return fmt.Errorf("convert: internal error: %s: tensor %q placed at %d before the statistics pass, laid out at %d", r.p.Files[fi].Name, r.p.entryName(it, &it.entries[ref.entry]), r.off[k], off)
			}
			continue
		}
		r.off[k] = off
	}
	r.layouts[fi] = l // until create writes its header
	return nil
}

// placeEarly places, before the statistics pass, the kept tensors that it
// cannot move. The quant-state JSONs whose lengths the statistics decide
// are 3 to 24 bytes longer than with a nested offset of 0 (the length of
// Python's repr of a float32); every byte offset in a file is a
// non-decreasing function of those lengths (the data before it, and the
// header: digits of offsets and shapes, padding to 8 bytes). So a tensor
// whose offset is the same with every JSON at its shortest and at its
// longest has that offset whatever the statistics find. Kept tensors come
// before the 4-bit ones in a file (F32 and BF16/F16 sort before U8), so
// that is true of nearly all of them. Their files are created (at the
// shortest size) and they are copied while the statistics pass runs,
// instead of waiting for it with the disk idle; layout checks their
// offsets.
func (r *runner) placeEarly(writeItems []*item, bounds map[int]*layoutBounds) error {
	p := r.p
	fixed := make([]int64, len(r.off)) // by entry number: the fixed offset, or -1
	for k := range fixed {
		fixed[k] = -1
	}
	anyFixed := false
	minSize := make(map[int]int64)
	for fi, b := range bounds {
		lo, refs, hi, hiRefs := b.lo, b.loRefs, b.hi, b.hiRefs
		for i, ref := range refs {
			// (Tensors are sorted by dtype and name, so i is the same
			// tensor in both layouts.)
			if off := lo.DataOffset() + lo.Begin[i]; off == hi.DataOffset()+hi.Begin[i] && ref == hiRefs[i] {
				fixed[int(p.items[ref.item].first)+int(ref.entry)] = off
				anyFixed = true
			}
		}
		minSize[fi] = lo.FileSize()
	}
	if !anyFixed {
		return nil
	}
	files := make(map[int]bool)
	for _, it := range writeItems {
		if it.quantize || it.numElements() == 0 {
			continue
		}
		ok := true
		for j := range it.entries {
			e := &it.entries[j]
			isFixed := fixed[int(it.first)+j] >= 0
			if r.inPart[e.file] && (!isFixed || r.pendingStats[e.file].Load() == 0) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		r.early[it.index] = true
		for j := range it.entries {
			if off := fixed[int(it.first)+j]; off >= 0 {
				r.off[int(it.first)+j] = off
				files[int(it.entries[j].file)] = true
			}
		}
	}
	for fi := range p.Files {
		if files[fi] {
			if err := r.open(fi, r.dir, minSize[fi]); err != nil {
				return err
			}
		}
	}
	return nil
}

// layoutBounds returns the shortest and longest layouts of each file of
// this run whose layout waits for statistics.
func (r *runner) layoutBounds() (map[int]*layoutBounds, error) {
	p := r.p
	short := func(it *item) (int64, error) { return int64(len(p.quantState(it, 0).MarshalPython())), nil }
	long := func(it *item) (int64, error) { return p.maxQuantStateLen(it), nil }
	bounds := make(map[int]*layoutBounds)
	for fi := range p.Files {
		if !r.inPart[fi] || r.pendingStats[fi].Load() == 0 {
			continue
		}
		var b layoutBounds
		var err error
		if b.lo, b.loRefs, err = r.plan(fi, short); err != nil {
			return nil, err
		}
		if b.hi, b.hiRefs, err = r.plan(fi, long); err != nil {
			return nil, err
		}
		bounds[fi] = &b
	}
	return bounds, nil
}

// openFused creates the fused files that placeEarly did not, at their
// shortest size (layout grows them).
func (r *runner) openFused(bounds map[int]*layoutBounds) error {
	for fi, f := range r.fused {
		if f != nil && r.files[fi] == nil {
			if err := r.open(fi, r.dir, bounds[fi].lo.FileSize()); err != nil {
				return err
			}
		}
	}
	return nil
}

// open creates output file fi in dir with size bytes (see newFileWriter).
func (r *runner) open(fi int, dir *outdir.Dir, size int64) error {
	name := r.p.Files[fi].Name
	f, err := dir.Create(name)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	r.files[fi] = f
	r.writers[fi] = pwriter{f} // until it has its own (run's cleanup closes it)
	fw, err := newFileWriter(f, size)
	if err != nil {
		return fmt.Errorf("convert: %s: %w", name, err)
	}
	r.writers[fi] = fw
	var w io.WriterAt = r.writers[fi]
	if r.s.hooks != nil && r.s.hooks.writer != nil {
		w = r.s.hooks.writer(name, w)
	}
	r.outs[fi] = w
	return nil
}

// create brings output file fi to its final size (creating it unless
// placeEarly did) and writes its header.
func (r *runner) create(fi int, dir *outdir.Dir) error {
	name := r.p.Files[fi].Name
	plan := r.layouts[fi]
	if r.files[fi] == nil {
		if err := r.open(fi, dir, plan.FileSize()); err != nil {
			return err
		}
	} else if err := r.writers[fi].grow(plan.FileSize()); err != nil {
		return fmt.Errorf("convert: %s: %w", name, err)
	}
	// The header is made and written a piece at a time (for millions of
	// tensors it is 100 MB that need not be held).
	w, at := r.outs[fi], int64(0)
	err := plan.WriteHeader(func(b []byte) error {
		if _, err := w.WriteAt(b, at); err != nil {
			return err
		}
		r.crcs[fi].add(at, b)
		at += int64(len(b))
		return nil
	})
	if err != nil {
		return fmt.Errorf("convert: %s: writing header: %w", name, err)
	}
	plan.Drop() // FileSize is all that is needed now
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
		off, err := r.entryOffset(it, j)
		if err != nil {
			return err
		}
		off += at
		if _, err := r.outs[e.file].WriteAt(b, off); err != nil {
			return fmt.Errorf("convert: %s: writing tensor %q: %w", r.p.Files[e.file].Name, r.p.entryName(it, e), err)
		}
		r.crcs[e.file].add(off, b)
		return nil
	}
	return fmt.Errorf("convert: internal error: %q has no entry of kind %d", it.src.Name, k)
}

// writeback starts writing back the n bytes of entry k of it from byte
// offset at on, which this job has written in full (see startWriteback).
func (r *runner) writeback(it *item, k entryKind, at, n int64) {
	for j := range it.entries {
		if e := &it.entries[j]; e.kind == k && r.inPart[e.file] {
			if off, err := r.entryOffset(it, j); err == nil {
				startWriteback(r.files[e.file], off+at, n)
			}
		}
	}
}

// read returns the bytes of elements [start, start+n) of it: a view of
// its input file's mapping, valid until the worker's next read or the end
// of the job, or where the item is not mapped, a pread into w.raw.
func (r *runner) read(w *worker, it *item, start, n int64) ([]byte, error) {
	size := int64(it.src.DType.Size())
	if r.mapOf != nil {
		if mem, base := r.mapOf(it); mem != nil {
			b, ok, err := r.inMaps.view(w, mem, base+start*size, n*size)
			if err != nil {
				return nil, fmt.Errorf("convert: %s: reading tensor %q: %w", r.srcName(it), it.src.Name, err)
			}
			if ok {
				if r.s.hooks != nil && r.s.hooks.mappedRead != nil {
					r.s.hooks.mappedRead(it.src.Name)
				}
				return b, nil
			}
		} else {
			unview(w)
		}
	}
	w.raw = jobs.Grow(w.raw, int(n*size))
	got, err := r.src(it).ReadAt(w.raw, start*size)
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

// guardInput runs job f of item it. Where the input is mapped, a memory
// fault in it (a file truncated by another process while it was read
// through its mapping) becomes an error naming the file instead of a
// crash. The last view's pages are dropped when f returns.
func (r *runner) guardInput(w *worker, it *item, f func() error) (err error) {
	if r.mapOf == nil {
		return f()
	}
	defer unview(w)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if e := recover(); e != nil {
			fault, ok := e.(interface{ Addr() uintptr })
			if !ok {
				panic(e)
			}
			err = fmt.Errorf("convert: %s: reading tensor %q: memory fault at %#x reading the file through its mapping: the file changed (was it truncated?) while it was converted", r.srcName(it), it.src.Name, fault.Addr())
		}
	}()
	return f()
}

// checkFinite returns the error for a non-finite element, unless
// --allow-nonfinite: i is what a raw kernel returned for raw, the bytes of
// the elements from index start of it (-1: all finite).
func (r *runner) checkFinite(it *item, raw []byte, start int64, i int) error {
	if i < 0 || r.s.allowNonFin {
		return nil
	}
	var v [1]float32
	size := it.src.DType.Size()
	if err := bnb.DecodeRaw(v[:], raw[i*size:], it.src.DType, it.dtype); err != nil {
		return r.kernelError(it, err)
	}
	return fmt.Errorf("convert: %s: tensor %q: element %d is %v after rounding to %v (NaN and Inf cannot be quantized faithfully; --allow-nonfinite quantizes anyway)",
		r.srcName(it), it.src.Name, start+int64(i), v[0], it.dtype)
}

// kernelError reports an error of a formats/bnb kernel, which the plan
// rules out (it quantizes F32, BF16 and F16 tensors only).
func (r *runner) kernelError(it *item, err error) error {
	return fmt.Errorf("convert: internal error: %s: tensor %q: %w", r.srcName(it), it.src.Name, err)
}

// doJob runs one job.
func (r *runner) doJob(ctx context.Context, w *worker, j job) error {
	it := j.it
	if r.s.hooks != nil && r.s.hooks.job != nil {
		r.s.hooks.job(it.src.Name, j.stats)
	}
	// (The regions show the passes in an execution trace, as qconv-bench
	// -trace takes one; they cost nothing while no trace is taken.)
	var err error
	switch {
	case j.stats:
		reg := trace.StartRegion(ctx, "stats")
		err = r.guardInput(w, it, func() error { return r.statsJob(w, j) })
		reg.End()
	case it.quantize:
		reg := trace.StartRegion(ctx, "quantize")
		err = r.guardInput(w, it, func() error { return r.quantJob(w, j) })
		reg.End()
	default:
		reg := trace.StartRegion(ctx, "keep")
		err = r.guardInput(w, it, func() error { return r.keepJob(w, j) })
		reg.End()
	}
	if err != nil {
		return err
	}
	if !j.stats { // the statistics pass reads bytes that the quantization pass counts
		r.addProgress(j.n * int64(it.src.DType.Size()))
	}
	if err := r.release(w, j); err != nil {
		return err
	}
	return r.drainReady(w)
}

// release counts job j as done; the last job of its item completes the
// item (in a fused file, see finishFused).
func (r *runner) release(w *worker, j job) error {
	if j.st.remaining.Add(-1) != 0 {
		return nil
	}
	it := j.it
	if j.stats {
		return r.finishStats(j)
	}
	if f := r.fusedFileOf(it); f != nil {
		return r.finishFused(w, j, f)
	}
	if it.quantize {
		if err := r.finishQuant(j); err != nil {
			return err
		}
	}
	return r.itemDone(it)
}

// statsJob computes the absmax values of a job's blocks straight from the
// raw bytes, a sub-chunk at a time, into the item's absmax vector.
func (r *runner) statsJob(w *worker, j job) error {
	it := j.it
	bs := int64(r.s.blocksize)
	for off := int64(0); off < j.n; off += subChunk {
		m := min(subChunk, j.n-off)
		raw, err := r.read(w, it, j.start+off, m)
		if err != nil {
			return err
		}
		i, err := bnb.BlockAbsmaxRaw(j.st.absmax[(j.start+off)/bs:], raw, it.src.DType, it.dtype, int(bs))
		if err != nil {
			return r.kernelError(it, err)
		}
		if err := r.checkFinite(it, raw, j.start+off, i); err != nil {
			return err
		}
	}
	return nil
}

// finishStats computes the nested offset of a double-quantized weight,
// the float32 mean of its absmax values, and so its quant-state JSON.
func (r *runner) finishStats(j job) error {
	it := j.it
	offset := bnb.CUDAMean(j.st.absmax)
	r.putAbsmax(j.st.absmax)
	j.st.absmax = nil
	r.offset[it.qi] = offset
	r.qstate[it.qi] = r.p.quantState(it, offset).MarshalPython()
	close(r.statsReady[it.qi])
	if e := it.entry(entryQuantState); r.entryInPart(e) && r.pendingStats[e.file].Add(-1) == 0 {
		return r.fileReady(int(e.file))
	}
	return nil
}

// quantJob quantizes a job's elements straight from the raw bytes, a
// sub-chunk at a time, and writes the packed codes and the absmax values,
// with double quantization as 8-bit codes and nested absmax values: a job
// covers whole nested blocks, whose codes depend on nothing outside them
// but the nested offset that the statistics pass found.
func (r *runner) quantJob(w *worker, j job) error {
	it := j.it
	bs := r.s.blocksize
	nb := int(bnb.NumBlocks(j.n, bs))
	w.packed = jobs.Grow(w.packed, int(bnb.PackedBytes(j.n)))
	b0 := j.start / int64(bs)
	fused := r.fusedFileOf(it) != nil
	var absmax []float32
	if fused {
		// Kept for the weight's last job, which double-quantizes them.
		absmax = j.st.absmax[b0 : b0+int64(nb)]
	} else {
		absmax = jobs.Grow(w.absmax, nb)
		w.absmax = absmax
	}
	for off := int64(0); off < j.n; off += subChunk {
		m := min(subChunk, j.n-off)
		raw, err := r.read(w, it, j.start+off, m)
		if err != nil {
			return err
		}
		i, err := bnb.QuantizeRaw(w.packed[off/2:], absmax[off/int64(bs):], raw, it.src.DType, it.dtype, bs, r.s.quant)
		if err != nil {
			return r.kernelError(it, err)
		}
		if err := r.checkFinite(it, raw, j.start+off, i); err != nil {
			return err
		}
	}
	if fused && r.deferData(w, j) {
		return nil
	}
	if err := r.writeEntry(it, entryData, j.start/2, w.packed); err != nil {
		return err
	}
	r.writeback(it, entryData, j.start/2, int64(len(w.packed)))
	if fused {
		return nil // finishFused double-quantizes the absmax values
	}
	if !r.s.doubleQuant {
		w.out = jobs.Grow(w.out, 4*nb)
		cast.Encode(w.out, absmax, dtype.F32)
		return r.writeEntry(it, entryAbsmax, 4*b0, w.out)
	}
	if r.statsReadyOf(it) == nil {
		return nil // no double-quant statistic of it is written here
	}
	return r.writeDoubleQuant(w, it, absmax, b0)
}

// writeDoubleQuant double-quantizes the absmax values of it's blocks from
// block b0 on (whole nested blocks, b0 a multiple of their size) with its
// nested offset and writes their 8-bit codes and nested absmax values.
func (r *runner) writeDoubleQuant(w *worker, it *item, absmax []float32, b0 int64) error {
	nb := len(absmax)
	nn := int(bnb.NumBlocks(int64(nb), bnb.NestedBlocksize))
	w.codes = jobs.Grow(w.codes, nb)
	w.nested = jobs.Grow(w.nested, nn)
	bnb.DoubleQuantOffset(w.codes, w.nested, absmax, r.offset[it.qi])
	if err := r.writeEntry(it, entryAbsmax, b0, w.codes); err != nil {
		return err
	}
	w.out = jobs.Grow(w.out, 4*nn)
	cast.Encode(w.out, w.nested, dtype.F32)
	return r.writeEntry(it, entryNestedAbsmax, 4*(b0/bnb.NestedBlocksize), w.out)
}

// finishQuant writes the per-tensor parts of a quantized weight once all
// its blocks are done: the code book, and with double quantization the
// nested code book.
func (r *runner) finishQuant(j job) error {
	it := j.it
	if err := r.writeEntry(it, entryQuantMap, 0, r.quantMap); err != nil {
		return err
	}
	if r.s.doubleQuant {
		if err := r.writeEntry(it, entryNestedQuantMap, 0, r.nestedMap); err != nil {
			return err
		}
	}
	if qs := r.qstateOf(it); qs != nil {
		return r.writeEntry(it, entryQuantState, 0, qs)
	}
	return nil
}

// keepJob copies a kept tensor's elements, cast to its output dtype if
// that differs, a sub-chunk at a time.
func (r *runner) keepJob(w *worker, j job) error {
	it := j.it
	from, to := it.src.DType, it.dtype
	ts := int64(to.Size())
	for off := int64(0); off < j.n; off += subChunk {
		m := min(subChunk, j.n-off)
		raw, err := r.read(w, it, j.start+off, m)
		if err != nil {
			return err
		}
		out := raw
		if from != to {
			w.vals = jobs.Grow(w.vals, int(m))
			w.out = jobs.Grow(w.out, int(m*ts))
			cast.Decode(w.vals, raw, from, from)
			cast.Encode(w.out, w.vals, to)
			out = w.out
		}
		if err := r.writeEntry(it, entryData, (j.start+off)*ts, out); err != nil {
			return err
		}
	}
	r.writeback(it, entryData, j.start*ts, j.n*ts)
	return nil
}
