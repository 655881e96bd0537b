package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/qconv/qconv/convert/internal/outdir"
	"github.com/qconv/qconv/convert/internal/transpose"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/internal/pyjson"
)

// Summary reports what a conversion did.
type Summary struct {
	Src, Dst string
	// InputBytes is the total size of the source weight files.
	InputBytes int64
	// OutputBytes is the total size of the output weight files.
	OutputBytes int64
	// TensorsQuantized and TensorsKept count source tensors.
	TensorsQuantized, TensorsKept int
	// Files are the output weight files; Index is the index file name,
	// or "" for a single-file output.
	Files []string
	Index string
	// Copied lists the files copied unchanged; NotCopied the weight
	// files in other formats that were left out.
	Copied, NotCopied []string
	// Seconds is the wall-clock time of the conversion.
	Seconds float64
	// PeakRSSBytes is the peak resident set size of the process when the
	// conversion ended (getrusage; 0 where unavailable). It covers the
	// whole process, not only this conversion.
	PeakRSSBytes int64
	// AlreadyComplete is true when dst already held this conversion and
	// nothing was done.
	AlreadyComplete bool
	// Plan is the plan that was carried out.
	Plan *Plan `json:"-"`
}

// A source is an open input checkpoint, seen through the plan's eyes.
type source struct {
	ck      *checkpoint.Checkpoint
	tensors []srcTensor
	files   []string      // shard names by ordinal
	readers []io.ReaderAt // per srcTensor (same order as tensors); nil: ck's tensors, read through reader
	bytes   int64
	config  *pyjson.Value // the config.json to start from (ck.Config, or a Source's)

	// state and inputs are what a Source adds to the plan state (see
	// Source.State and Source.Inputs).
	state  map[string]string
	inputs []string
}

// reader returns a reader of the bytes of tensors[i]. For a checkpoint on
// disk it is made when asked (not kept per tensor: 64 bytes a tensor).
func (in *source) reader(i int) io.ReaderAt {
	if in.readers != nil {
		return in.readers[i]
	}
	return in.ck.Tensors()[i].SectionReader()
}

func openSource(path string) (*source, error) {
	ck, err := checkpoint.Open(path)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	src := &source{ck: ck, config: ck.Config}
	ordinal := make(map[*checkpoint.Shard]int, len(ck.Shards))
	for i, sh := range ck.Shards { // sorted by name: model-00001-of-… in order
		ordinal[sh] = i
		src.files = append(src.files, sh.Name)
		src.bytes += sh.Size()
	}
	src.tensors = make([]srcTensor, 0, len(ck.Tensors()))
	ts := ck.Tensors()
	for i := range ts {
		src.tensors = append(src.tensors, srcTensor{TensorInfo: ts[i].TensorInfo, shard: int32(ordinal[ts[i].Shard]), input: int32(i)})
	}
	return src, nil
}

// Convert converts the checkpoint at src (a .safetensors file, or a
// directory holding model.safetensors or a sharded index) to a
// bitsandbytes 4-bit checkpoint in the directory dst, as described in the
// package documentation.
//
// The output is built in the work directory ".<dst>.qconv-partial" beside
// dst and renamed to dst at the end, so dst never looks complete unless it
// is; src is never modified. On an error or when ctx is cancelled, output
// files that were finished are kept there (a rerun with the same options
// continues from them: see state.go) and everything else is removed; if no
// file was finished the work directory is removed.
//
// With Options.Part selecting one part of several, Convert writes only the
// output files of that part into the work directory and returns;
// Options.Finalize finishes the conversion once all parts are done.
func Convert(ctx context.Context, src, dst string, opts Options) (*Summary, error) {
	start := time.Now()
	go bnb.Prepare() // the kernels' tables, while the headers are read and planned
	s, err := opts.settings()
	if err != nil {
		return nil, err
	}
	in, err := openSource(src)
	if err != nil {
		return nil, err
	}
	defer in.ck.Close()
	return convertSource(ctx, start, s, in, src, dst)
}

// convertSource is Convert once the source is open.
func convertSource(ctx context.Context, start time.Time, s *settings, in *source, src, dst string) (*Summary, error) {
	workPath, err := workDirFor(dst)
	if err != nil {
		return nil, err
	}
	iopts := outdir.InstallOptions{Force: s.force}
	if s.hooks != nil {
		iopts.Step = s.hooks.install
	}
	// An install into dst that was interrupted is finished first: the
	// output it installs is complete.
	if done, err := outdir.Recover(dst, workPath, workKind, iopts); err != nil {
		return nil, fmt.Errorf("convert: finishing the interrupted install into %s: %w", dst, err)
	} else if done {
		fmt.Fprintf(s.log, "qconv: finished the interrupted install of %s\n", dst)
	}
	if len(in.tensors) >= manyTensors {
		// What a conversion holds grows with the tensor count (see
		// "Memory" in the package documentation); with millions of
		// tensors that is hundreds of MB, and the collector's default
		// goal of twice the live heap would double it. A goal of 1.25
		// times costs a few more collections of a heap that changes
		// little while the data is converted.
		defer debug.SetGCPercent(debug.SetGCPercent(manyTensorsGCPercent))
	}
	p, err := newPlan(s, in.tensors, in.files, in.config)
	if err != nil {
		return nil, err
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(s.log, "qconv: warning: %s\n", w)
	}
	st, err := newPlanState(p, in)
	if err != nil {
		return nil, err
	}
	keyList := fileKeys(p, st)
	keys := make(map[string]string, len(keyList))
	for i, f := range p.Files {
		keys[f.Name] = keyList[i]
	}
	rec, err := expectedRecord(p, in, st, keyList)
	if err != nil {
		return nil, err
	}
	// A dst that holds this very conversion is left as it is; one that
	// holds a conversion with the same settings from an older source is
	// replaced; one with other settings needs --force.
	force := s.force
	complete, same, err := checkRecord(dst, rec)
	if err != nil && !force {
		return nil, fmt.Errorf("convert: %w; use --force to replace it", err)
	}
	if complete && !s.restart {
		sum := &Summary{Src: src, Dst: dst, InputBytes: in.bytes, TensorsQuantized: p.Quantized, TensorsKept: p.Kept, Plan: p, AlreadyComplete: true}
		for _, f := range p.Files {
			sum.Files = append(sum.Files, f.Name)
			if fi, err := os.Lstat(filepath.Join(dst, f.Name)); err == nil {
				sum.OutputBytes += fi.Size()
			}
		}
		sum.Index = rec.Index
		sum.Seconds = time.Since(start).Seconds()
		sum.PeakRSSBytes = peakRSS()
		return sum, nil
	}
	if same {
		force = true
	}
	iopts.Force = force
	if err := outdir.Check(in.ck, dst, force); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	if s.finalize {
		if err := checkFinalizable(dst); err != nil {
			return nil, err
		}
	}
	w, err := openWorkDir(dst, st, keys, s.restart, s.log)
	if err != nil {
		return nil, err
	}
	sum := &Summary{Src: src, Dst: dst, InputBytes: in.bytes, TensorsQuantized: p.Quantized, TensorsKept: p.Kept, Plan: p}
	fail := func(err error) (*Summary, error) {
		err = interrupted(ctx, err)
		if s.hooks != nil && s.hooks.crash {
			return nil, err
		}
		if s.part.Whole() && !s.finalize && !w.anyDone() {
			w.dir.RemoveAll()
			return nil, err
		}
		w.dir.Close()
		return nil, fmt.Errorf("%w (%s)", err, keptHint(ctx, err, w.path(), s.finalize))
	}

	if !s.finalize {
		if err := convertFiles(ctx, p, in, w, sum); err != nil {
			return fail(err)
		}
		if !s.part.Whole() {
			w.dir.Close()
			sum.Seconds = time.Since(start).Seconds()
			sum.PeakRSSBytes = peakRSS()
			return sum, nil
		}
	}
	for _, f := range p.Files {
		ok, err := w.isDone(f.Name)
		if err != nil {
			return fail(err)
		}
		if !ok {
			return fail(fmt.Errorf("convert: output file %s is missing or incomplete in %s (has every part of the conversion finished, with the same options?)", f.Name, w.path()))
		}
	}
	if err := w.prune(); err != nil {
		return fail(err)
	}
	if err := finish(ctx, p, in, w.dir, sum); err != nil {
		return fail(err)
	}
	if err := writeRecord(dst, w, rec); err != nil {
		return fail(err)
	}
	if err := w.removeState(sum.Files); err != nil {
		return fail(err)
	}
	if err := outdir.Install(w.dir, dst, iopts); err != nil {
		return nil, fmt.Errorf("convert: installing the output in %s: %w (rerun the same command to finish)", dst, err)
	}
	sum.Seconds = time.Since(start).Seconds()
	sum.PeakRSSBytes = peakRSS()
	for _, name := range sum.NotCopied {
		fmt.Fprintf(s.log, "qconv: note: not copied: %s (weights in another format; the output has the 4-bit safetensors weights)\n", name)
	}
	return sum, nil
}

// maxMappedWorkers is the most workers for which the input is read
// through mappings (inmap_linux.go). Measured (docs/benchmark.md, 3
// December 2026): on the 2-core VM mapping saved 0.2 s of CPU per 2 GB;
// on the 16-core host (13.5 GB bf16 on tmpfs, alternated) it was as fast
// at 4 workers and slower at 8 (1.50-1.63 s against 1.33 s) and 16
// (1.16-1.35 s against 1.11-1.16 s), with more CPU: the spans' TLB
// flushes reach every CPU the process runs on.
const maxMappedWorkers = 4

// convertFiles writes the output files of this run's part that are not
// already complete in w.
func convertFiles(ctx context.Context, p *Plan, in *source, w *workDir, sum *Summary) error {
	s := p.s
	// A reader per job, made when the job reads (no reader per tensor
	// is kept: see source.reader).
	src := func(it *item) io.ReaderAt {
		r := in.reader(int(it.src.input))
		if it.transposed {
			r = &transpose.Reader{Src: r, Shape: transpose.Shape{Rows: it.src.Shape[0], Cols: it.src.Shape[1], Size: int64(it.src.DType.Size())}}
		}
		if s.hooks != nil && s.hooks.reader != nil {
			r = s.hooks.reader(it.src.Name, r)
		}
		return r
	}
	r := &runner{p: p, s: s, src: src, inPart: make([]bool, len(p.Files))}
	// Mapped input is faster on few cores and slower on many: more than
	// maxMappedWorkers workers use pread.
	if maps := newInputMaps(); maps != nil && s.workers <= maxMappedWorkers && in.readers == nil && in.ck != nil && (s.hooks == nil || s.hooks.reader == nil && !s.hooks.pread) {
		// Files on disk: read through their mappings (inmap_linux.go).
		defer maps.close() // after r.run, whose workers have all returned
		tensors := in.ck.Tensors()
		r.inMaps = maps
		r.mapOf = func(it *item) ([]byte, int64) {
			if it.transposed {
				return nil, 0
			}
			t := tensors[it.src.input]
			return maps.mapping(t.Shard.Path, t.Shard.Size(), t.Shard.SyscallConn), t.Shard.DataOffset() + t.Begin
		}
	}
	for i, f := range p.Files {
		if !s.part.has(i) {
			continue
		}
		done, err := w.isDone(f.Name)
		if err != nil {
			return err
		}
		r.inPart[i] = !done
		if done {
			fmt.Fprintf(s.log, "qconv: %s is already complete in %s; kept\n", f.Name, w.path())
		}
	}
	r.fileDone = func(fi int, size int64, crc uint32, crcOK bool) error {
		if crcOK {
			return w.markDoneCRC(p.Files[fi].Name, size, crc)
		}
		return w.markDone(p.Files[fi].Name)
	}
	if err := r.run(ctx, w.dir); err != nil {
		return err
	}
	for i, f := range p.Files {
		if s.part.has(i) {
			sum.Files = append(sum.Files, f.Name)
		}
	}
	return nil
}

// keptHint says what to do about the finished output files kept in the work
// directory dir after err. Only an interruption or an I/O error goes away
// by rerunning the same command; anything else needs its cause fixed
// first (--allow-nonfinite for a NaN, for example, continues from the kept
// files, since it does not change the output of finite tensors).
func keptHint(ctx context.Context, err error, dir string, finalize bool) string {
	var pe *fs.PathError
	switch {
	case finalize:
		return fmt.Sprintf("the finished parts are kept in %s: run the missing parts (--shard I/N, same flags), then --finalize again", dir)
	case ctx.Err() != nil || errors.As(err, &pe):
		return fmt.Sprintf("the finished output files are kept in %s: rerun the same command to continue from them, or pass --restart to discard them", dir)
	}
	return fmt.Sprintf("the finished output files are kept in %s: fix the cause and rerun to continue from them, or pass --restart to discard them", dir)
}

// checkFinalizable fails when no part of a conversion to dst has run, so
// that --finalize without parts creates no work directory.
func checkFinalizable(dst string) error {
	dir, err := workDirFor(dst)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("convert: nothing to finalize for %s: no part of the conversion has run (there is no %s); run the parts with --shard I/N and the same flags first", dst, dir)
	}
	return nil
}

// A source of manyTensors tensors or more is converted with the garbage
// collector's goal at manyTensorsGCPercent (GOGC) instead of its default.
const (
	manyTensors          = 100_000
	manyTensorsGCPercent = 25
)

// interrupted turns a cancellation into a clear error.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return fmt.Errorf("convert: interrupted")
	}
	return err
}

// finish writes the index, config.json and the copied files into work,
// and fills sum. The output weight files must be complete in work.
func finish(ctx context.Context, p *Plan, in *source, work *outdir.Dir, sum *Summary) error {
	sum.Files = nil
	for _, f := range p.Files {
		sum.Files = append(sum.Files, f.Name)
	}
	var err error
	if sum.OutputBytes, sum.Index, err = outdir.WriteIndex(work, sum.Files, p.TotalParameters); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if in.config != nil {
		if err := work.WriteFile(checkpoint.ConfigFileName, p.ConfigJSON(in.config)); err != nil {
			return fmt.Errorf("convert: %w", err)
		}
	} else if !p.s.dense {
		fmt.Fprintf(p.s.log, "qconv: note: %s has no config.json; the output has none either (transformers needs one with quantization_config)\n", in.ck.Path)
	}
	if sum.Copied, sum.NotCopied, err = outdir.CopyAux(ctx, in.ck, work); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return nil
}
