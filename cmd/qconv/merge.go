package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/convert/merge"
	"github.com/qconv/qconv/formats/bnb"
)

const mergeUsage = `
usage: qconv merge BASE ADAPTER DST [flags]

Fold a PEFT LoRA adapter into its base model, as
PeftModel.from_pretrained(base, ADAPTER).merge_and_unload() + save_pretrained
would, streaming with bounded memory on any CPU.

BASE is a dense (f32/bf16/f16) or bitsandbytes 4-bit safetensors checkpoint
(a file, a directory with model.safetensors, or a sharded one). ADAPTER is a
PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
DST is a new (or empty) directory; it gets the merged model laid out and
sharded as transformers saves it, config.json from BASE, and BASE's other
small files (tokenizer, generation_config.json, ...).

Every merged element is the correctly rounded W + float32(s·(B·A)), with
s = float32(lora_alpha/r) (or /sqrt(r) with use_rslora); see the
convert/merge package documentation. Supported: LoRA on Linear and Conv1D
(fan_in_fan_out) layers and embeddings (lora_embedding_A/B), rank_pattern and
alpha_pattern, lora_bias, bias="all"/"lora_only" and modules_to_save (whole
tensors saved in the adapter). Refused, with the reason: DoRA and other PEFT
methods, and an adapter whose modules or shapes do not match BASE.

Output: a dense checkpoint in BASE's dtype (--dtype to change it), or with
--quantize a bitsandbytes 4-bit one, byte-identical to "qconv convert" of the
dense merge (convert's flags choose the settings). A 4-bit BASE is merged as
PEFT merges a 4-bit model: weights the adapter does not touch are copied
unchanged, merged ones are dequantized exactly as bitsandbytes does, their
float32 sums quantized with BASE's own settings (quant state dtype float32).
With a 4-bit BASE, --quantize requantizes every weight with convert's
settings instead, and --quantize=false writes the dense merge.

Resume, --shard/--finalize, progress and --json work as for convert; the
adapter's files are part of what a resumed run checks.

Examples:
  qconv merge ./llama-bf16 ./my-lora ./llama-merged
  qconv merge ./llama-bf16 ./my-lora ./llama-merged-nf4 --quantize
  qconv merge ./llama-nf4 ./my-qlora ./merged-nf4          # 4-bit in, 4-bit out
  qconv merge ./llama-nf4 ./my-qlora ./merged-bf16 --quantize=false

Exit codes: 0 success, 2 usage error, invalid input or failed merge.
`

func mergeCommand() *command {
	return &command{
		name:    "merge",
		summary: "fold a PEFT LoRA adapter into its base model (dense, or straight to 4-bit)",
		runCtx:  runMerge,
	}
}

// triBool is a boolean flag that knows whether it was set.
type triBool struct{ set, v bool }

func (b *triBool) String() string { return fmt.Sprint(b.v) }
func (b *triBool) Set(s string) error {
	switch strings.ToLower(s) {
	case "true", "1", "t":
		b.v = true
	case "false", "0", "f":
		b.v = false
	default:
		return fmt.Errorf("want true or false")
	}
	b.set = true
	return nil
}
func (b *triBool) IsBoolFlag() bool { return true }

// mergeSummary is the --json output.
type mergeSummary struct {
	Base             string   `json:"base"`
	Adapter          string   `json:"adapter"`
	Dst              string   `json:"dst"`
	Quantized        bool     `json:"quantized"`
	QuantizedBase    bool     `json:"quantized_base"`
	QuantType        string   `json:"quant_type,omitempty"`
	Blocksize        int      `json:"blocksize,omitempty"`
	DoubleQuant      bool     `json:"double_quant,omitempty"`
	DType            string   `json:"dtype"`
	ComputeDType     string   `json:"compute_dtype,omitempty"`
	Workers          int      `json:"workers"`
	Modules          int      `json:"modules_merged"`
	Embeddings       int      `json:"embeddings_merged"`
	Replaced         int      `json:"tensors_replaced"`
	Biases           int      `json:"biases_merged"`
	Requantized      int      `json:"tensors_requantized"`
	ExactElements    int64    `json:"exact_fallback_elements"`
	InputBytes       int64    `json:"input_bytes"`
	OutputBytes      int64    `json:"output_bytes"`
	TensorsQuantized int      `json:"tensors_quantized"`
	TensorsKept      int      `json:"tensors_kept"`
	Files            []string `json:"files"`
	Index            string   `json:"index,omitempty"`
	Copied           []string `json:"copied"`
	NotCopied        []string `json:"not_copied"`
	Seconds          float64  `json:"seconds"`
	PeakRSSBytes     int64    `json:"peak_rss_bytes"`
}

func runMerge(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("merge")
	var quantize triBool
	fs.Var(&quantize, "quantize", "write a bitsandbytes 4-bit checkpoint (default: only for a 4-bit BASE, with its settings); --quantize=false writes a dense one")
	quantType := fs.String("quant-type", "nf4", "with --quantize: 4-bit data type, nf4 or fp4")
	blocksize := fs.Int("blocksize", convert.DefaultBlocksize, "with --quantize: 4-bit block size, a power of two from 32 to 4096")
	doubleQuant := fs.Bool("double-quant", true, "with --quantize: double-quantize the absmax statistics")
	dt := fs.String("dtype", "auto", "dtype of the merged model: auto (BASE's config.json dtype, else its tensors'), bf16, f16 or f32")
	computeDT := fs.String("compute-dtype", "", "with --quantize: bnb_4bit_compute_dtype, bf16, f16 or f32 (default: the resolved --dtype)")
	var skip, include stringList
	fs.Var(&skip, "skip", "with --quantize: keep tensors matching this glob dense (repeatable)")
	fs.Var(&include, "include", "with --quantize: quantize floating-point tensors matching this glob (repeatable)")
	workersArg := workersFlag(fs)
	out := addOutputFlags(fs)
	allowNonFinite := fs.Bool("allow-nonfinite", false, "with --quantize: quantize weights holding NaN or Inf instead of failing")
	shard := fs.String("shard", "", "merge only part I of N of the output files (see qconv help convert)")
	finalize := fs.Bool("finalize", false, "finish a merge whose parts (--shard) are all done")
	restart := fs.Bool("restart", false, "discard the partial output of an interrupted merge to DST and start again")
	pos, code, ok := parseFlags(fs, mergeUsage, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 3 {
		return usageError(stderr, "merge", "expected BASE, ADAPTER and DST, got %d arguments", len(pos))
	}
	workers, code, ok := resolveWorkers("merge", *workersArg, stderr)
	if !ok {
		return code
	}
	var quantFlags []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "quant-type", "blocksize", "double-quant", "compute-dtype", "skip", "include", "allow-nonfinite":
			quantFlags = append(quantFlags, "--"+f.Name)
		}
	})
	if len(quantFlags) > 0 && !(quantize.set && quantize.v) {
		return usageError(stderr, "merge", "%s only apply to a 4-bit output: add --quantize", strings.Join(quantFlags, ", "))
	}
	opts := merge.Options{Convert: convert.Options{
		Blocksize:      *blocksize,
		NoDoubleQuant:  !*doubleQuant,
		Skip:           skip,
		Include:        include,
		Workers:        workers,
		AllowNonFinite: *allowNonFinite,
		Finalize:       *finalize,
		Restart:        *restart,
		Log:            stderr,
	}}
	switch {
	case !quantize.set:
		opts.Output = merge.OutputAuto
	case quantize.v:
		opts.Output = merge.OutputQuantized
	default:
		opts.Output = merge.OutputDense
	}
	opts.Convert.Force = *out.force
	var err error
	if opts.Convert.QuantType, ok = bnb.ParseQuantType(strings.ToLower(*quantType)); !ok {
		return usageError(stderr, "merge", "--quant-type %q: want nf4 or fp4", *quantType)
	}
	if !bnb.ValidBlocksize(*blocksize) {
		return usageError(stderr, "merge", "--blocksize %d: want a power of two from 32 to 4096", *blocksize)
	}
	if opts.Convert.DType, err = convert.ParseDType(*dt); err != nil {
		return usageError(stderr, "merge", "--dtype: %s", errorLine(err))
	}
	if *computeDT != "" {
		if opts.Convert.ComputeDType, err = convert.ParseDType(*computeDT); err != nil {
			return usageError(stderr, "merge", "--compute-dtype: %s", errorLine(err))
		}
	}
	if opts.Convert.MaxShardSize, code, ok = out.check("merge", stderr); !ok {
		return code
	}
	if *shard != "" {
		if opts.Convert.Part, err = parsePart(*shard, os.Getenv); err != nil {
			return usageError(stderr, "merge", "--shard: %v", err)
		}
		if *finalize {
			return usageError(stderr, "merge", "--shard and --finalize do not go together: finalize once, after all parts")
		}
	}

	var sum *merge.Summary
	err = withProgress(*out.progress, "merge", "merging", stderr, func(rep *progressReporter) (err error) {
		opts.Convert.Progress = rep.update
		sum, err = merge.Merge(ctx, pos[0], pos[1], pos[2], opts)
		return err
	})
	if err != nil {
		printError(stderr, "merge", err)
		return exitError
	}
	if !opts.Convert.Part.Whole() && !*out.asJSON {
		fmt.Fprintf(stdout, "merged part %s: %s; run with --finalize when all parts are done\n", opts.Convert.Part, strings.Join(sum.Files, ", "))
		return exitOK
	}
	p := sum.Plan
	js := mergeSummary{
		Base: sum.Src, Adapter: sum.Adapter, Dst: sum.Dst,
		Quantized: sum.Quantized, QuantizedBase: sum.QuantizedBase,
		DType: p.ModelDType.TorchName(), Workers: workers,
		Modules: sum.Modules, Embeddings: sum.Embeddings, Replaced: sum.Replaced, Biases: sum.Biases,
		Requantized: sum.Requantized, ExactElements: sum.ExactElements,
		InputBytes: sum.InputBytes, OutputBytes: sum.OutputBytes,
		TensorsQuantized: sum.TensorsQuantized, TensorsKept: sum.TensorsKept,
		Files: nonNil(sum.Files), Index: sum.Index, Copied: nonNil(sum.Copied), NotCopied: nonNil(sum.NotCopied),
		Seconds: sum.Seconds, PeakRSSBytes: sum.PeakRSSBytes,
	}
	if sum.Quantized {
		js.QuantType, js.Blocksize, js.DoubleQuant = sum.QuantType.String(), sum.Blocksize, sum.DoubleQuant
		js.ComputeDType = p.ComputeDType.TorchName()
	}
	if js.DType == "" {
		js.DType = "mixed"
	}
	if *out.asJSON {
		return writeJSON("merge", stdout, stderr, js)
	}
	kind := "dense " + js.DType
	if sum.Quantized {
		kind = fmt.Sprintf("%s, blocksize %d", js.QuantType, js.Blocksize)
		if js.DoubleQuant {
			kind += ", double quant"
		}
		kind = fmt.Sprintf("4-bit (%s), %d tensors quantized", kind, sum.TensorsQuantized)
		if sum.QuantizedBase && opts.Output == merge.OutputAuto {
			kind += fmt.Sprintf(" (%d merged and requantized from float32 as PEFT does, %d copied unchanged)", sum.Requantized, sum.TensorsQuantized-sum.Requantized)
		}
	}
	fmt.Fprintf(stdout, "wrote %s: %d LoRA modules merged (%d embeddings), %d tensors replaced, %d biases; %s; %s -> %s in %d file(s); %.1f s\n",
		sum.Dst, sum.Modules, sum.Embeddings, sum.Replaced, sum.Biases, kind,
		humanBytes(sum.InputBytes), humanBytes(sum.OutputBytes), len(sum.Files), sum.Seconds)
	return exitOK
}
