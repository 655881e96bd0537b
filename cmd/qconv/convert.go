package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/formats/bnb"
)

const convertUsage = `
usage: qconv convert SRC DST [flags]

Convert a float32/bfloat16/float16 safetensors checkpoint to the bitsandbytes
4-bit (NF4/FP4) checkpoint that transformers + bitsandbytes (CUDA) would save
with BitsAndBytesConfig(load_in_4bit=True, ...), byte for byte.

SRC is a .safetensors file, or a directory holding model.safetensors or
model.safetensors.index.json and its shards. DST is a new (or empty)
directory; it gets model.safetensors (or shards and an index), config.json
with quantization_config, and the other small files of SRC (tokenizer,
generation_config.json, ...). Weight files in other formats (.bin, .pt, .pth,
.ckpt) are not copied. The output is built in a temporary directory beside
DST and renamed at the end: on an error or Ctrl-C, DST is not created.

Quantized: exactly the tensors transformers + bitsandbytes quantize for the
architecture in config.json, looked up in qconv's table generated from
transformers itself (the weights of torch.nn.Linear and GPT-2 Conv1D layers,
Conv1D transposed; not lm_head, embeddings, norms, biases, mixture-of-experts
experts and routers, _keep_in_fp32_modules). An architecture transformers
quantizes nothing of (Falcon) is refused; one the table does not know falls
back to name rules with a warning. --dry-run prints the plan (per tensor:
quantize or keep and why) and writes nothing. --skip and --include
(path.Match globs over tensor or module names, '*' crossing dots;
repeatable) keep more tensors dense or force quantization; an --include of
what the architecture keeps dense, or a glob that matches nothing, is
refused or warned about.

Memory stays bounded whatever the model size (see the convert package
documentation for the arithmetic); -j sets the parallelism (0, the
default: all CPUs). -v prints a line per tensor as it is written, as
llama-quantize does ("[3/21] NAME [256, 64] bf16 -> nf4, 32.77 kB ->
9.27 kB"), and the summary gives the whole model's bits per weight.

Large models and clusters: the output is built in .DST.qconv-partial beside
DST. An interrupted conversion (Ctrl-C, kill, power loss) rerun with the same
arguments keeps the output files already finished (checked by size and
CRC-32C) and redoes the rest; other arguments or a changed SRC are refused
(--restart discards the partial work). --shard I/N converts only the output
files of part I of N (0-based; every part computes the same plan from SRC's
headers); --shard auto/N takes I from JOB_COMPLETION_INDEX (Kubernetes
Indexed Job) or SLURM_ARRAY_TASK_ID (Slurm array). Once all parts are done,
"qconv convert SRC DST --finalize" (same flags) checks them, writes the
index, config.json and copied files, and moves the result to DST.

Examples:
  qconv convert ./llama-bf16 ./llama-nf4
  qconv convert ./llama-f32 ./llama-fp4 --quant-type fp4 --dtype bf16 -j 8
  qconv convert ./model ./out --skip 'model.layers.0.*' --json
  qconv convert --dry-run ./mixtral-bf16                                  # the plan, nothing written
  qconv convert ./llama-405b ./out --max-shard-size 5GB --shard auto/16   # one array task
  qconv convert ./llama-405b ./out --max-shard-size 5GB --finalize        # after all tasks

DST must be a directory: a DST ending in .safetensors is refused.

Exit codes: 0 success, 2 usage error, invalid input or failed conversion,
130/143 interrupted by SIGINT/SIGTERM (after cleaning up).
`

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func convertCommand() *command {
	return &command{
		name:    "convert",
		summary: "convert a safetensors checkpoint to bitsandbytes 4-bit (NF4/FP4)",
		runCtx:  runConvert,
	}
}

// convertSummary is the --json output.
type convertSummary struct {
	Src              string   `json:"src"`
	Dst              string   `json:"dst"`
	QuantType        string   `json:"quant_type"`
	Blocksize        int      `json:"blocksize"`
	DoubleQuant      bool     `json:"double_quant"`
	DType            string   `json:"dtype"`
	ComputeDType     string   `json:"compute_dtype"`
	Workers          int      `json:"workers"`
	InputBytes       int64    `json:"input_bytes"`
	OutputBytes      int64    `json:"output_bytes"`
	TensorsQuantized int      `json:"tensors_quantized"`
	TensorsKept      int      `json:"tensors_kept"`
	Parameters       int64    `json:"parameters,omitempty"`
	BitsPerWeight    float64  `json:"bits_per_weight,omitempty"`
	Files            []string `json:"files"`
	Index            string   `json:"index,omitempty"`
	Copied           []string `json:"copied"`
	NotCopied        []string `json:"not_copied"`
	Seconds          float64  `json:"seconds"`
	InputMBPerSecond float64  `json:"input_mb_per_s"`
	PeakRSSBytes     int64    `json:"peak_rss_bytes"`
	// Architecture is the class qconv's table decided by ("" when the
	// table does not know it; Warnings then says so).
	Architecture string   `json:"architecture"`
	Warnings     []string `json:"warnings"`
	// AlreadyComplete: DST already held this conversion; nothing was done.
	AlreadyComplete bool `json:"already_complete"`
}

func runConvert(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("convert")
	quantType := fs.String("quant-type", "nf4", "4-bit data type: nf4 or fp4")
	blocksize := fs.Int("blocksize", convert.DefaultBlocksize, "4-bit block size: a power of two from 32 to 4096")
	doubleQuant := fs.Bool("double-quant", true, "double-quantize the absmax statistics (--double-quant=false turns it off)")
	dt := fs.String("dtype", "auto", "dtype the model is loaded in (kept tensors are stored in it, weights rounded to it before quantizing): auto, bf16, f16 or f32; auto = config.json's dtype, else the tensors' own")
	computeDT := fs.String("compute-dtype", "", "bnb_4bit_compute_dtype: bf16, f16 or f32 (default: the resolved --dtype)")
	var skip, include stringList
	fs.Var(&skip, "skip", "keep tensors matching this glob dense (repeatable)")
	fs.Var(&include, "include", "quantize floating-point tensors matching this glob, whatever their shape (repeatable)")
	workersArg := workersFlag(fs)
	out := addOutputFlags(fs)
	allowNonFinite := fs.Bool("allow-nonfinite", false, "quantize weights holding NaN or Inf instead of failing")
	shard := fs.String("shard", "", "convert only part I of N of the output files: I/N (0-based), or auto/N to take I from JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID")
	finalize := fs.Bool("finalize", false, "finish a conversion whose parts (--shard) are all done: check them and write DST")
	restart := fs.Bool("restart", false, "discard the partial output of an interrupted conversion to DST and start again")
	dryRunFlag := fs.Bool("dry-run", false, "print the plan (per tensor: quantize or keep and why, shapes, dtypes, bytes; the whole model's bits per weight) and write nothing; DST may be left out")
	verbose := fs.Bool("v", false, "print a line per tensor on stderr as it is written: [i/N] name [shape] bf16 -> nf4, sizes")
	pos, code, ok := parseFlags(fs, convertUsage, args, stdout, stderr)
	if !ok {
		return code
	}
	if *dryRunFlag && len(pos) == 1 {
		pos = append(pos, "")
	}
	if len(pos) != 2 {
		return usageError(stderr, "convert", "expected SRC and DST, got %d arguments", len(pos))
	}
	if strings.HasSuffix(strings.ToLower(filepath.Clean(pos[1])), ".safetensors") {
		return usageError(stderr, "convert", "DST %s names a .safetensors file, but convert writes a directory (model.safetensors, config.json, ...); give a directory, such as %s",
			pos[1], strings.TrimSuffix(filepath.Clean(pos[1]), filepath.Ext(pos[1]))+"-nf4")
	}
	workers, code, ok := resolveWorkers("convert", *workersArg, stderr)
	if !ok {
		return code
	}
	opts := convert.Options{
		Blocksize:      *blocksize,
		NoDoubleQuant:  !*doubleQuant,
		Skip:           skip,
		Include:        include,
		Workers:        workers,
		AllowNonFinite: *allowNonFinite,
		Force:          *out.force,
		Finalize:       *finalize,
		Restart:        *restart,
		Log:            stderr,
	}
	var err error
	if opts.QuantType, ok = bnb.ParseQuantType(strings.ToLower(*quantType)); !ok {
		return usageError(stderr, "convert", "--quant-type %q: want nf4 or fp4", *quantType)
	}
	if !bnb.ValidBlocksize(*blocksize) {
		return usageError(stderr, "convert", "--blocksize %d: want a power of two from 32 to 4096", *blocksize)
	}
	if opts.DType, err = convert.ParseDType(*dt); err != nil {
		return usageError(stderr, "convert", "--dtype: %s", errorLine(err))
	}
	if *computeDT != "" {
		if opts.ComputeDType, err = convert.ParseDType(*computeDT); err != nil {
			return usageError(stderr, "convert", "--compute-dtype: %s", errorLine(err))
		}
	}
	if opts.MaxShardSize, code, ok = out.check("convert", stderr); !ok {
		return code
	}
	if *shard != "" {
		if opts.Part, err = parsePart(*shard, os.Getenv); err != nil {
			return usageError(stderr, "convert", "--shard: %v", err)
		}
		if *finalize {
			return usageError(stderr, "convert", "--shard and --finalize do not go together: finalize once, after all parts")
		}
	}

	if *dryRunFlag {
		p, err := convert.PlanOnly(pos[0], opts)
		if err != nil {
			printError(stderr, "convert", err)
			return exitError
		}
		d := newDryRun(pos[0], p)
		if *out.asJSON {
			return writeJSON("convert", stdout, stderr, d)
		}
		printDryRun(stdout, d)
		return exitOK
	}

	var sum *convert.Summary
	err = withProgress(*out.progress, "convert", "converting", stderr, func(rep *progressReporter) (err error) {
		opts.Progress, opts.Log = rep.update, rep.logWriter()
		if *verbose {
			opts.TensorDone = func(i, n int, t convert.TensorPlan) { rep.printLine(tensorLine(i, n, t)) }
		}
		sum, err = convert.Convert(ctx, pos[0], pos[1], opts)
		return err
	})
	if err != nil {
		printError(stderr, "convert", err)
		return exitError
	}

	if !opts.Part.Whole() && !*out.asJSON {
		if len(sum.Files) == 0 {
			fmt.Fprintf(stdout, "part %s: nothing to convert: the plan has %d output file(s) for %d parts (a smaller --max-shard-size makes more files); run with --finalize when all parts are done\n",
				opts.Part, len(sum.Plan.Files), opts.Part.Count)
			return exitOK
		}
		fmt.Fprintf(stdout, "converted part %s: %s; run with --finalize when all parts are done\n", opts.Part, strings.Join(sum.Files, ", "))
		return exitOK
	}
	p := sum.Plan
	js := convertSummary{
		Src: sum.Src, Dst: sum.Dst,
		QuantType: opts.QuantType.String(), Blocksize: *blocksize, DoubleQuant: *doubleQuant,
		DType: p.ModelDType.TorchName(), ComputeDType: p.ComputeDType.TorchName(), Workers: workers,
		InputBytes: sum.InputBytes, OutputBytes: sum.OutputBytes,
		TensorsQuantized: sum.TensorsQuantized, TensorsKept: sum.TensorsKept,
		Files: nonNil(sum.Files), Index: sum.Index, Copied: nonNil(sum.Copied), NotCopied: nonNil(sum.NotCopied),
		Seconds: sum.Seconds, PeakRSSBytes: sum.PeakRSSBytes, Warnings: nonNil(p.Warnings), AlreadyComplete: sum.AlreadyComplete,
	}
	if p.Arch != nil {
		js.Architecture = p.Arch.Class
	}
	if js.DType == "" {
		js.DType = "mixed"
	}
	if sum.Seconds > 0 {
		js.InputMBPerSecond = float64(sum.InputBytes) / 1e6 / sum.Seconds
	}
	// The plan (hundreds of MB for millions of tensors) is not needed any
	// more: let the collector have it before the output is read back.
	sum.Plan, p = nil, nil
	if sum.TensorsQuantized+sum.TensorsKept >= 100_000 {
		runtime.GC() // before the heap grows by the output's header
	}
	if opts.Part.Whole() {
		// Whole-model bits per weight, counted as inspect counts them.
		if m, err := modelSize(sum.Dst); err == nil {
			js.Parameters, js.BitsPerWeight = m.parameters, m.bitsPerWeight()
		}
	}
	if *out.asJSON {
		return writeJSON("convert", stdout, stderr, js)
	}
	if sum.AlreadyComplete {
		fmt.Fprintf(stdout, "already complete: %s holds this conversion (%d file(s), %s); nothing to do\n", sum.Dst, len(sum.Files), humanBytes(sum.OutputBytes))
		return exitOK
	}
	dq := ""
	if *doubleQuant {
		dq = " + double quant"
	}
	bpw := ""
	if js.BitsPerWeight > 0 {
		bpw = fmt.Sprintf(" (%.2f bpw)", js.BitsPerWeight)
	}
	fmt.Fprintf(stdout, "wrote %s: %d tensors quantized (%s%s, blocksize %d), %d kept (%s); %s -> %s%s in %d file(s); %.1f s, %.0f MB/s\n",
		sum.Dst, sum.TensorsQuantized, js.QuantType, dq, *blocksize, sum.TensorsKept, js.DType,
		humanBytes(sum.InputBytes), humanBytes(sum.OutputBytes), bpw, len(sum.Files), sum.Seconds, js.InputMBPerSecond)
	return exitOK
}

// tensorLine is convert -v's line for one tensor, as llama-quantize
// prints: "[3/21] model.layers.0.mlp.up_proj.weight [256, 64] bf16 -> nf4,
// 32.77 kB -> 9.27 kB" (i is 0-based; the line counts from 1).
func tensorLine(i, n int, t convert.TensorPlan) string {
	to := strings.ToLower(t.DType.String())
	if t.Quantized {
		to = t.QuantType.String()
	}
	return fmt.Sprintf("[%*d/%d] %s %s %s -> %s, %s -> %s",
		len(strconv.Itoa(n)), i+1, n, t.Name, formatShape(t.Shape), strings.ToLower(t.SrcDType.String()), to, humanBytes(t.SrcBytes), humanBytes(t.OutBytes))
}

// parsePart parses --shard: "I/N", "auto/N" or "/N" (I from the
// scheduler's environment: JOB_COMPLETION_INDEX for a Kubernetes Indexed
// Job, SLURM_ARRAY_TASK_ID for a Slurm job array).
func parsePart(s string, getenv func(string) string) (convert.Part, error) {
	i, n, ok := strings.Cut(s, "/")
	if !ok {
		return convert.Part{}, fmt.Errorf("%q: want I/N or auto/N", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 1 {
		return convert.Part{}, fmt.Errorf("%q: N must be a positive integer", s)
	}
	if i == "" || i == "auto" {
		for _, v := range []string{"JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"} {
			if i = getenv(v); i != "" {
				break
			}
		}
		if i == "" {
			return convert.Part{}, fmt.Errorf("%q: neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID (Slurm array) is set; give the part as I/%d", s, count)
		}
	}
	index, err := strconv.Atoi(i)
	if err != nil || index < 0 || index >= count {
		return convert.Part{}, fmt.Errorf("part index %q: want an integer from 0 to %d", i, count-1)
	}
	return convert.Part{Index: index, Count: count}, nil
}
