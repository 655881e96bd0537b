// Package bnb implements the numerics and metadata of bitsandbytes 4-bit
// (NF4 and FP4) quantization exactly as the bitsandbytes CUDA kernels
// produce them, so that qconv can write checkpoints byte-identical to those
// written by bitsandbytes and transformers.
//
// It provides the code books ([CodeBook], [DynamicMap]), the block
// quantizer ([QuantizeBlocks]) with an emulation of the GPU's approximate
// reciprocal, its absmax pass alone ([BlockAbsmax]), the same two kernels
// on raw little-endian F32/BF16/F16 tensor bytes rounded to the model dtype
// on the way ([QuantizeRaw], [BlockAbsmaxRaw], [DecodeRaw]; they also
// report the first NaN or infinity), the float32 mean torch computes on the
// GPU ([CUDAMean]), double quantization of the per-block absmax values
// ([DoubleQuant]), dequantization ([DequantizeBlocks], [UndoDoubleQuant],
// [UndoDoubleQuantMap]) and the quant-state JSON blob stored next to every
// quantized weight ([QuantState]).
//
// The package works on float32 slices and byte slices only. It does not read
// or write files, decide which tensors to quantize or which dtype a model
// is loaded in, cast tensors that are kept unquantized (see formats/dtype),
// or build config.json; those belong to formats/safetensors,
// formats/checkpoint and convert.
//
// The reference for every number is the CUDA path of bitsandbytes 0.50
// (compiled with --use_fast_math for sm_90); the repository's
// testdata/golden holds outputs of the real library that the tests compare
// against byte for byte.
package bnb
