package main

import (
	"context"
	"fmt"
	"io"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/convert/dequant"
)

const dequantUsage = `
usage: qconv dequant SRC DST [--dtype bf16|f16|f32] [flags]

Turn a bitsandbytes 4-bit (NF4/FP4) checkpoint back into a dense one that
transformers loads without bitsandbytes (to merge a QLoRA adapter, or to
convert to GGUF and other formats), with the values bitsandbytes'
dequantize_4bit returns, bit for bit.

SRC is a .safetensors file, or a directory holding model.safetensors or
model.safetensors.index.json and its shards; any block size, with or
without double quantization, packed weights stored as U8 or as the
F32/BF16/F16 of a non-uint8 bnb_4bit_quant_storage. DST is a new (or empty)
directory. It gets every 4-bit weight in its original shape (a GPT-2
style Conv1D weight, which transformers quantizes transposed, back in its
[in, out] orientation: config.json's architecture says which), the other
tensors as they were, config.json without quantization_config and with
"dtype" set, and the other small files of SRC. The output is built in a
temporary directory beside DST and renamed at the end: on an error or
Ctrl-C, DST is not created.

--dtype: the dtype of the output's floating-point tensors. The default
(auto) writes each weight in the dtype it was quantized from (its quant
state's "dtype"), as bitsandbytes does, and leaves the other tensors as
they are. bf16, f16 or f32 write every floating-point tensor in that dtype
(weights rounded once from the float32 dequantized values, others cast,
round to nearest even).

Examples:
  qconv dequant ./llama-nf4 ./llama-bf16
  qconv dequant ./llama-nf4 ./llama-f32 --dtype f32 -j 8

Exit codes: 0 success, 2 usage error, invalid input (also a 4-bit
checkpoint of an architecture transformers cannot quantize, such as
Falcon) or failed dequantization, 130/143 interrupted by SIGINT/SIGTERM (after cleaning up).
`

func dequantCommand() *command {
	return &command{
		name:    "dequant",
		summary: "turn a bitsandbytes 4-bit checkpoint back into a dense one",
		runCtx:  runDequant,
	}
}

// dequantSummary is the --json output.
type dequantSummary struct {
	Src         string   `json:"src"`
	Dst         string   `json:"dst"`
	DType       string   `json:"dtype"`
	Weights     int      `json:"weights_dequantized"`
	Kept        int      `json:"tensors_kept"`
	InputBytes  int64    `json:"input_bytes"`
	OutputBytes int64    `json:"output_bytes"`
	Files       []string `json:"files"`
	Index       string   `json:"index,omitempty"`
	Copied      []string `json:"copied"`
	Seconds     float64  `json:"seconds"`
}

func runDequant(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("dequant")
	dt := fs.String("dtype", "auto", "dtype of the output's floating-point tensors: auto (each weight's quant-state dtype, other tensors unchanged), bf16, f16 or f32")
	workersArg := workersFlag(fs)
	out := addOutputFlags(fs)
	pos, code, ok := parseFlags(fs, dequantUsage, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return usageError(stderr, "dequant", "expected SRC and DST, got %d arguments", len(pos))
	}
	opts := dequant.Options{Force: *out.force}
	var err error
	if opts.DType, err = convert.ParseDType(*dt); err != nil {
		return usageError(stderr, "dequant", "--dtype: %s", errorLine(err))
	}
	if opts.Workers, code, ok = resolveWorkers("dequant", *workersArg, stderr); !ok {
		return code
	}
	if opts.MaxShardSize, code, ok = out.check("dequant", stderr); !ok {
		return code
	}

	var sum *dequant.Summary
	err = withProgress(*out.progress, "dequant", "dequantizing", stderr, func(rep *progressReporter) (err error) {
		opts.Progress = rep.update
		sum, err = dequant.Dequantize(ctx, pos[0], pos[1], opts)
		return err
	})
	if err != nil {
		printError(stderr, "dequant", err)
		return exitError
	}
	js := dequantSummary{
		Src: sum.Src, Dst: sum.Dst, DType: sum.DType.TorchName(),
		Weights: sum.Weights, Kept: sum.Kept,
		InputBytes: sum.InputBytes, OutputBytes: sum.OutputBytes,
		Files: sum.Files, Index: sum.Index, Copied: nonNil(sum.Copied), Seconds: sum.Seconds,
	}
	if js.DType == "" {
		js.DType = "mixed"
	}
	if *out.asJSON {
		return writeJSON("dequant", stdout, stderr, js)
	}
	fmt.Fprintf(stdout, "wrote %s: %d weights dequantized (%s), %d tensors kept; %s -> %s in %d file(s); %.1f s\n",
		sum.Dst, sum.Weights, js.DType, sum.Kept, humanBytes(sum.InputBytes), humanBytes(sum.OutputBytes), len(sum.Files), sum.Seconds)
	return exitOK
}
