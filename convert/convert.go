package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/safetensors"
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
	// Plan is the plan that was carried out.
	Plan *Plan `json:"-"`
}

// A source is an open input checkpoint, seen through the plan's eyes.
type source struct {
	ck      *checkpoint.Checkpoint
	tensors []srcTensor
	files   []string        // shard names by ordinal
	readers []io.ReaderAt   // per srcTensor (same order as tensors)
	exclude map[string]bool // files of the checkpoint itself, relative to its dir
	bytes   int64
}

func openSource(path string) (*source, error) {
	ck, err := checkpoint.Open(path)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	src := &source{ck: ck, exclude: map[string]bool{checkpoint.ConfigFileName: true, checkpoint.IndexFileName: true}}
	ordinal := make(map[*checkpoint.Shard]int, len(ck.Shards))
	for i, sh := range ck.Shards { // sorted by name: model-00001-of-… in order
		ordinal[sh] = i
		src.files = append(src.files, sh.Name)
		src.exclude[filepath.ToSlash(sh.Name)] = true
		src.bytes += sh.Size()
	}
	for _, t := range ck.Tensors() {
		src.tensors = append(src.tensors, srcTensor{TensorInfo: t.TensorInfo, shard: ordinal[t.Shard]})
		src.readers = append(src.readers, t.SectionReader())
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
	s, err := opts.settings()
	if err != nil {
		return nil, err
	}
	in, err := openSource(src)
	if err != nil {
		return nil, err
	}
	defer in.ck.Close()

	if err := checkDst(in.ck, dst, s.force); err != nil {
		return nil, err
	}
	p, err := newPlan(s, in.tensors, in.files, in.ck.Config)
	if err != nil {
		return nil, err
	}
	st, err := newPlanState(p, in)
	if err != nil {
		return nil, err
	}
	w, err := openWorkDir(dst, st, s.restart)
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
			os.RemoveAll(w.dir)
			return nil, err
		}
		return nil, fmt.Errorf("%w (finished output files are kept in %s: rerun the same command to continue, or pass --restart)", err, w.dir)
	}

	if !s.finalize {
		if err := convertFiles(ctx, p, in, w, sum); err != nil {
			return fail(err)
		}
		if !s.part.Whole() {
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
			return fail(fmt.Errorf("convert: output file %s is missing or incomplete in %s (has every part of the conversion finished, with the same options?)", f.Name, w.dir))
		}
	}
	if err := finish(ctx, p, in, w.dir, sum); err != nil {
		return fail(err)
	}
	if err := w.removeState(sum.Files); err != nil {
		return fail(err)
	}
	if err := install(w.dir, dst, s.force, sum); err != nil {
		return nil, err
	}
	sum.Seconds = time.Since(start).Seconds()
	sum.PeakRSSBytes = peakRSS()
	for _, name := range sum.NotCopied {
		fmt.Fprintf(s.log, "qconv: note: not copied: %s (weights in another format; the output has the 4-bit safetensors weights)\n", name)
	}
	return sum, nil
}

// convertFiles writes the output files of this run's part that are not
// already complete in w.
func convertFiles(ctx context.Context, p *Plan, in *source, w *workDir, sum *Summary) error {
	s := p.s
	byName := make(map[string]io.ReaderAt, len(in.tensors))
	for i, t := range in.tensors {
		byName[t.Name] = in.readers[i]
	}
	readers := make([]io.ReaderAt, len(p.items))
	for i, it := range p.items {
		readers[i] = byName[it.src.Name]
		if s.hooks != nil && s.hooks.reader != nil {
			readers[i] = s.hooks.reader(it.src.Name, readers[i])
		}
	}
	r := &runner{p: p, s: s, src: readers, inPart: make([]bool, len(p.Files))}
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
			fmt.Fprintf(s.log, "qconv: %s is already complete in %s; kept\n", f.Name, w.dir)
		}
	}
	r.fileDone = func(fi int) error { return w.markDone(p.Files[fi].Name) }
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

// interrupted turns a cancellation into a clear error.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return fmt.Errorf("convert: interrupted")
	}
	return err
}

// finish writes the index, config.json and the copied files into work,
// and fills sum. The output weight files must be complete in work.
func finish(ctx context.Context, p *Plan, in *source, work string, sum *Summary) error {
	sum.Files = nil
	var entries []checkpoint.IndexEntry
	var totalSize int64
	for _, f := range p.Files {
		path := filepath.Join(work, f.Name)
		sf, err := safetensors.Open(path)
		if err != nil {
			return fmt.Errorf("convert: checking output: %w", err)
		}
		for _, t := range sf.Tensors() {
			entries = append(entries, checkpoint.IndexEntry{Tensor: t.Name, File: f.Name})
			totalSize += t.Size()
		}
		sum.OutputBytes += sf.Size()
		sf.Close()
		sum.Files = append(sum.Files, f.Name)
	}
	if p.Sharded() {
		ix := checkpoint.NewIndex(p.TotalParameters, totalSize, entries)
		b, err := ix.Marshal()
		if err != nil {
			return fmt.Errorf("convert: %w", err)
		}
		if err := writeFile(filepath.Join(work, checkpoint.IndexFileName), b); err != nil {
			return err
		}
		sum.Index = checkpoint.IndexFileName
	}
	if in.ck.Config != nil {
		if err := writeFile(filepath.Join(work, checkpoint.ConfigFileName), p.ConfigJSON(in.ck.Config)); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(p.s.log, "qconv: note: %s has no config.json; the output has none either (transformers needs one with quantization_config)\n", in.ck.Path)
	}
	if in.ck.Layout == checkpoint.LayoutFile {
		return nil
	}
	cp, skipped, err := auxFiles(in.ck.Dir, in.exclude)
	if err != nil {
		return err
	}
	for _, rel := range cp {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		if err := copyFile(filepath.Join(work, filepath.FromSlash(rel)), filepath.Join(in.ck.Dir, filepath.FromSlash(rel))); err != nil {
			return err
		}
	}
	sum.Copied, sum.NotCopied = cp, skipped
	return nil
}

// canonical returns the absolute, symlink-resolved form of path; the part
// that does not exist yet is appended as given.
func canonical(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	var rest []string
	p := abs
	for {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(append([]string{r}, rest...)...), nil
		}
		parent := filepath.Dir(p)
		if parent == p {
			return abs, nil
		}
		rest = append([]string{filepath.Base(p)}, rest...)
		p = parent
	}
}

// within reports whether path is dir or inside it (both canonical).
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// checkDst refuses destinations that would overwrite or sit inside the
// source, or hold files (unless force).
func checkDst(ck *checkpoint.Checkpoint, dst string, force bool) error {
	if dst == "" {
		return fmt.Errorf("convert: empty destination")
	}
	d, err := canonical(dst)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	srcDir, err := canonical(ck.Dir)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if ck.Layout != checkpoint.LayoutFile && within(d, srcDir) {
		return fmt.Errorf("convert: destination %s is inside the source %s", dst, ck.Path)
	}
	if within(srcDir, d) {
		return fmt.Errorf("convert: the source %s is inside the destination %s", ck.Path, dst)
	}
	fi, err := os.Stat(dst)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("convert: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("convert: destination %s exists and is not a directory", dst)
	}
	ents, err := os.ReadDir(dst)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if len(ents) > 0 && !force {
		return fmt.Errorf("convert: destination %s is not empty (use --force to replace its files)", dst)
	}
	return nil
}

// staleWeights matches weight files that a new output replaces, as
// transformers' save_pretrained cleans them.
var staleWeights = regexp.MustCompile(`^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$`)

// install moves the finished output from work to dst.
func install(work, dst string, force bool, sum *Summary) error {
	fi, err := os.Stat(dst)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(work, dst); err != nil {
			return fmt.Errorf("convert: %w", err)
		}
		return syncDir(filepath.Dir(dst))
	}
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("convert: destination %s exists and is not a directory", dst)
	}
	ents, err := os.ReadDir(dst)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if len(ents) == 0 {
		if err := os.Remove(dst); err != nil {
			return fmt.Errorf("convert: %w", err)
		}
		if err := os.Rename(work, dst); err != nil {
			return fmt.Errorf("convert: %w", err)
		}
		return syncDir(filepath.Dir(dst))
	}
	if !force {
		return fmt.Errorf("convert: destination %s is not empty (use --force to replace its files)", dst)
	}
	// Replace files one by one; remove stale weight files first so that
	// dst never holds a mix of old and new shards with a matching index.
	outputs := map[string]bool{}
	for _, f := range sum.Files {
		outputs[f] = true
	}
	if sum.Index != "" {
		outputs[sum.Index] = true
	}
	for _, e := range ents {
		if !e.IsDir() && staleWeights.MatchString(e.Name()) && !outputs[e.Name()] {
			if err := os.Remove(filepath.Join(dst, e.Name())); err != nil {
				return fmt.Errorf("convert: %w", err)
			}
		}
	}
	if err := moveTree(work, dst); err != nil {
		return err
	}
	if err := os.RemoveAll(work); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return syncDir(dst)
}

// moveTree renames every file of the tree src into the same place under
// dst, replacing files there and creating directories as needed.
func moveTree(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	for _, e := range ents {
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if e.IsDir() {
			if err := os.MkdirAll(to, 0o777); err != nil {
				return fmt.Errorf("convert: %w", err)
			}
			if err := moveTree(from, to); err != nil {
				return err
			}
			continue
		}
		if err := os.Rename(from, to); err != nil {
			return fmt.Errorf("convert: %w", err)
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("convert: syncing %s: %w", dir, err)
	}
	return nil
}
