// Package dequant turns a bitsandbytes 4-bit (NF4 or FP4) checkpoint back
// into a dense one that transformers loads without bitsandbytes, with the
// values bitsandbytes' dequantize_4bit computes, bit for bit.
//
// Dequantize reads the checkpoint (any block size, with or without double
// quantization, packed bytes stored as U8 or as the F32/BF16/F16 of a
// non-uint8 quant storage, whose raw bytes are used as they are, never
// converted) and writes:
//
//   - every 4-bit weight back in its original shape (the quant state's
//     "shape"), in the quant state's dtype: dequantize_4bit's float32
//     values rounded to nearest even, exactly what bitsandbytes returns.
//     With Options.DType the float32 values are rounded once to that dtype
//     instead. A weight that transformers quantized transposed (a GPT-2
//     style Conv1D, stored [in, out], quantized as [out, in]; formats/arch
//     says which, from config.json's architecture) is written back
//     transposed, in the source's [in, out] orientation;
//   - the quant-state tensors (absmax, quant_map, nested_*, quant_state.*)
//     dropped;
//   - the other tensors unchanged (cast, round to nearest even, if
//     Options.DType is set);
//   - config.json without quantization_config and with "dtype" set (also
//     in the sub-configs where transformers writes it, for vision-language
//     models);
//     the other files of the directory (tokenizer, generation_config.json,
//     ...) copied;
//   - model.safetensors laid out as transformers' save_pretrained writes
//     it (the safetensors reference order and {"format": "pt"} metadata),
//     split into shards with an index beyond Options.MaxShardSize.
//
// The work is cut into jobs of at most Options.JobElements elements (whole
// groups of 256 blocks of a weight) which workers read, dequantize and
// write at their planned file offsets, so memory stays bounded whatever the
// model size (see DefaultJobElements). The output is built in a temporary
// directory beside the destination and renamed into place at the end.
//
// Weight and Blocks give block-level access to one 4-bit weight, which
// convert/verify uses to measure quantization error.
//
// A checkpoint whose architecture transformers cannot quantize (formats/arch's
// Refuse, such as FalconForCausalLM) is refused.
//
// This package does not quantize (see convert) and does not judge the
// quality of a quantization (see convert/verify).
package dequant
