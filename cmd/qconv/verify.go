package main

import (
	"context"
	"fmt"
	"io"

	"github.com/qconv/qconv/convert/verify"
)

const verifyUsage = `
usage: qconv verify [--json] [-j N] [--progress MODE] ORIGINAL QUANTIZED

Check a bitsandbytes 4-bit checkpoint (QUANTIZED) against the checkpoint it
was made from (ORIGINAL), tensor by tensor:

  - every tensor must be in both (a 4-bit weight's quant-state tensors go
    with it);
  - a 4-bit weight is dequantized exactly as bitsandbytes does and compared
    with the original cast to the quant state's dtype (what was quantized):
    each block's absmax must be the original's (within the rounding of its
    8-bit code under double quantization), and each element's error must
    be within half the cell of its 4-bit code x absmax (at most half the
    widest gap between neighbouring codes), plus |code| x that absmax
    rounding. It reports the largest error, RMSE, SNR in dB, and BOUND, how
    much of its bound the worst element used (at most 1);
  - any other tensor must be identical to the original after a
    round-to-nearest-even cast to its dtype.

A weight that transformers quantizes transposed (GPT-2 style Conv1D,
stored [in, out]; "transposed" in --json) is compared with the original
transposed; which weights those are comes from config.json's architecture
(QUANTIZED's, else ORIGINAL's) in the table of what transformers quantizes
(formats/arch). An architecture transformers cannot quantize (Falcon) is
refused with exit status 2.

Tensors are listed worst first, then the totals. --json writes one object
whose every tensor has every field (0, "" or false where a field does not
apply; snr_db is null where there is no error):
  ok, original, quantized,
  tensors ([{name, kind ("quantized" or "dense"), status ("ok",
    "out-of-bounds", "mismatch", "invalid", "missing", "extra"), message,
    dtype, original_dtype, shape, elements, transposed, quant_type, blocksize,
    double_quant, max_abs_error, rmse, snr_db (null when there is no
    error), bound_ratio, out_of_bounds, bad_absmax_blocks, non_finite,
    differing}]),
  totals ({tensors, quantized, dense, failed, missing, extra, elements,
    max_abs_error, rmse, snr_db} over the quantized weights).

Exit status: 0 every tensor passes, 1 a tensor is out of bounds, differs,
is missing or cannot be compared, 2 usage error, a checkpoint cannot be
read, or QUANTIZED holds no 4-bit weight (a mixed-up path must not pass),
130/143 interrupted by SIGINT/SIGTERM.
`

func verifyCommand() *command {
	return &command{
		name:    "verify",
		summary: "check a 4-bit checkpoint's error against its source, tensor by tensor",
		runCtx:  runVerify,
	}
}

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("verify")
	asJSON := fs.Bool("json", false, "write one JSON object instead of text")
	workersArg := workersFlag(fs)
	progress := progressFlag(fs)
	pos, code, ok := parseFlags(fs, verifyUsage, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return usageError(stderr, "verify", "expected ORIGINAL and QUANTIZED, got %d arguments", len(pos))
	}
	workers, code, ok := resolveWorkers("verify", *workersArg, stderr)
	if !ok {
		return code
	}
	if code, ok := checkProgress("verify", *progress, stderr); !ok {
		return code
	}
	var rep *verify.Report
	err := withProgress(*progress, "verify", "verifying", stderr, func(pr *progressReporter) (err error) {
		rep, err = verify.Compare(ctx, pos[0], pos[1], verify.Options{Workers: workers, Progress: pr.update})
		return err
	})
	if err != nil {
		printError(stderr, "verify", err)
		return exitError
	}
	if rep.Totals.Quantized == 0 {
		fmt.Fprintf(stderr, "qconv verify: %s: holds no 4-bit weight (no tensor has a quant_state.bitsandbytes__nf4/fp4 companion); give the 4-bit checkpoint as QUANTIZED, after ORIGINAL\n", pos[1])
		return exitError
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		printError(stderr, "verify", err)
		return exitError
	}
	if !rep.OK() {
		return exitFindings
	}
	return exitOK
}
