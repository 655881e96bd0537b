// Package verify measures how far a bitsandbytes 4-bit checkpoint is from
// the checkpoint it was made from, and checks that every difference is one
// that 4-bit quantization explains.
//
// Compare pairs the tensors of an ORIGINAL (dense) and a QUANTIZED
// checkpoint by name. A quantized weight (a packed tensor with its
// quant-state tensors) is dequantized exactly as bitsandbytes does and
// compared, block by block, with the original values cast to the quant
// state's dtype (what was quantized):
//
//   - its stored absmax must equal the true absmax of the block (without
//     double quantization), or be within the rounding of its 8-bit code,
//     half the code's cell in the nested code book × nested_absmax (with
//     it);
//   - each element's error must be within what the code book allows: half
//     the cell of its 4-bit code (at most half the widest gap between
//     neighbouring codes) × the block's absmax, plus |code| × the absmax
//     rounding bound above.
//
// A weight that transformers quantized as the transpose of the original (a
// GPT-2 style Conv1D weight, stored [in, out] and quantized [out, in];
// formats/arch says which, from config.json's architecture) is compared
// with the original transposed. An architecture that transformers cannot
// quantize (formats/arch's Refuse, such as FalconForCausalLM) is refused.
//
// The report gives, per weight, the largest error, RMSE, the signal-to-noise
// ratio in dB and how much of the bound the worst element used. Dense
// tensors must be identical to the original after a round-to-nearest-even
// cast to their dtype. A tensor present on one side only fails.
//
// This package only reads. It does not judge whether a checkpoint loads in
// transformers (that is the auditor, audit/), nor whether it is
// byte-identical to what bitsandbytes would write (the convert tests do
// that against golden data): a different but valid rounding passes here.
package verify
