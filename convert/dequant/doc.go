// Package dequant turns a bitsandbytes 4-bit (NF4 or FP4) checkpoint back
// into a dense one, with the values bitsandbytes' dequantize_4bit computes,
// bit for bit.
//
// Weight reads one packed 4-bit weight and its quant state (any block size,
// with or without double quantization, packed bytes stored as U8 or as the
// F32/BF16/F16 of a non-uint8 quant storage, whose raw bytes are used as
// they are, never converted).
//
// This package does not quantize (see convert) and does not judge the
// quality of a quantization (see convert/verify).
package dequant
