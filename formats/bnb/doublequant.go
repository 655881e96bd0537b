package bnb

import "math"

// DoubleQuant compresses a tensor's absmax vector (one float32 per 4-bit
// block) the way bitsandbytes does with compress_statistics=True (spec §4):
// offset is the float32 mean of absmax as torch computes it on CUDA; the
// values absmax[i]-offset are quantized in blocks of NestedBlocksize to 8-bit
// codes of the signed dynamic map (DynamicMap), with the nested absmax of
// each block scaled by the GPU's approximate reciprocal and each code chosen
// by the CUDA kernel's binary search.
//
// codes has len(absmax) entries (the U8 "absmax" tensor of a double-quantized
// checkpoint), nestedAbsmax has NumBlocks(len(absmax), NestedBlocksize) and
// offset is the JSON "nested_offset".
func DoubleQuant(absmax []float32) (codes []byte, nestedAbsmax []float32, offset float32) {
	codes = make([]byte, len(absmax))
	nestedAbsmax = make([]float32, NumBlocks(int64(len(absmax)), NestedBlocksize))
	if len(absmax) == 0 {
		return codes, nestedAbsmax, 0
	}
	offset = cudaMeanF32(absmax)
	doubleQuantInto(codes, nestedAbsmax, absmax, offset)
	return codes, nestedAbsmax, offset
}

// doubleQuantInto is DoubleQuant with a given offset.
func doubleQuantInto(codes []byte, nestedAbsmax, absmax []float32, offset float32) {
	code := DynamicMap()
	rcp := rcpTable()
	var buf [NestedBlocksize]float32
	for b := 0; len(absmax) > 0; b++ {
		blk := buf[:min(NestedBlocksize, len(absmax))]
		for i := range blk {
			blk[i] = absmax[i] - offset // torch's subtraction: IEEE, no flush
		}
		absmax = absmax[len(blk):]
		am, _ := blockAbsmax(blk)
		nestedAbsmax[b] = am
		r := rcpApproxT(rcp, am)
		for i, v := range blk {
			codes[i] = quantize8(&code, ftz(ftz(v)*r))
		}
		codes = codes[len(blk):]
	}
}

// quantize8 is the CUDA kernel's dQuantize<0>: a fixed seven-step binary
// search over the sorted 256-entry map, then a choice between the final
// pivot and its neighbour by the float32 midpoint. A value exactly on a
// midpoint keeps the pivot where the search ended. NaN gives 0.
func quantize8(code *[256]float32, s float32) byte {
	pivot, upperP, lowerP := 127, 255, 0
	lower, upper := float32(-1), float32(1)
	val := code[pivot]
	for step := 64; step > 0; step >>= 1 {
		if s > val {
			lowerP, lower = pivot, val
			pivot += step
		} else {
			upperP, upper = pivot, val
			pivot -= step
		}
		val = code[pivot]
	}
	if upperP == 255 {
		upper = code[255]
	}
	if lowerP == 0 {
		lower = code[0]
	}
	if s > val {
		if mid := ftz((upper + val) * 0.5); s > mid {
			return byte(upperP)
		}
		return byte(pivot)
	}
	if mid := ftz((lower + val) * 0.5); s < mid {
		return byte(lowerP)
	}
	return byte(pivot)
}

// UndoDoubleQuant recovers the float32 absmax vector from double-quantized
// statistics as bitsandbytes' dequantize_4bit does (spec §4.3):
// dst[i] = (DynamicMap()[codes[i]] * nestedAbsmax[i/NestedBlocksize]) + offset,
// each operation rounded to float32 (the product on the GPU, flushing
// subnormals). dst must have len(codes) entries and nestedAbsmax
// NumBlocks(len(codes), NestedBlocksize); UndoDoubleQuant panics otherwise.
func UndoDoubleQuant(dst []float32, codes []byte, nestedAbsmax []float32, offset float32) {
	if len(dst) < len(codes) || int64(len(nestedAbsmax)) < NumBlocks(int64(len(codes)), NestedBlocksize) {
		panic("bnb: UndoDoubleQuant: dst or nestedAbsmax too short")
	}
	code := DynamicMap()
	for i, c := range codes {
		dst[i] = ftz(code[c]*nestedAbsmax[i/NestedBlocksize]) + offset
	}
}

// DequantizeBlocks expands n = len(dst) packed 4-bit codes of type q to
// float32 as bitsandbytes' CUDA dequantize_4bit does: dst[i] =
// CodeBook(q)[code i] * absmax[i/blocksize], rounded to float32 with
// subnormal results flushed, except that FP4 code 8 gives -0 (the CUDA
// kernel applies the sign bit itself; only the stored quant_map has +0). bitsandbytes then rounds to the quant state's
// dtype; callers that need its exact bf16/f16 output round dst with
// formats/dtype (round to nearest even).
//
// packed must hold PackedBytes(n) bytes and absmax NumBlocks(n, blocksize)
// values; DequantizeBlocks panics otherwise or if q or blocksize is invalid.
func DequantizeBlocks(dst []float32, packed []byte, absmax []float32, blocksize int, q QuantType) {
	if !q.Valid() || !ValidBlocksize(blocksize) {
		panic("bnb: DequantizeBlocks: invalid quant type or blocksize")
	}
	n := int64(len(dst))
	if int64(len(packed)) < PackedBytes(n) || int64(len(absmax)) < NumBlocks(n, blocksize) {
		panic("bnb: DequantizeBlocks: packed or absmax too short")
	}
	cb := CodeBook(q)
	if q == FP4 {
		cb[8] = float32(math.Copysign(0, -1))
	}
	for b := 0; len(dst) > 0; b++ {
		out := dst[:min(blocksize, len(dst))]
		dst = dst[len(out):]
		am := absmax[b]
		in := packed[:(len(out)+1)/2]
		packed = packed[len(in):]
		for len(out) >= 2 && len(in) >= 1 {
			v := in[0]
			out[0] = ftz(cb[v>>4] * am)
			out[1] = ftz(cb[v&15] * am)
			out, in = out[2:], in[1:]
		}
		if len(out) == 1 {
			out[0] = ftz(cb[in[0]>>4] * am)
		}
	}
}
