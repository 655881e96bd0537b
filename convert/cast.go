package convert

import (
	"encoding/binary"
	"math"

	"github.com/qconv/qconv/formats/dtype"
)

// toFloat32 decodes the little-endian elements of raw (dtype src) into
// dst, rounding each to the model dtype to (as torch's .to(dtype) does,
// round to nearest even) and widening the result back to float32 exactly.
// These are the values bitsandbytes quantizes. src and to are F32, BF16 or
// F16; len(dst) elements are decoded.
func toFloat32(dst []float32, raw []byte, src, to dtype.DType) {
	switch src {
	case dtype.F32:
		switch to {
		case dtype.BF16:
			for i := range dst {
				f := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
				dst[i] = dtype.BF16ToF32(dtype.F32ToBF16(f))
			}
		case dtype.F16:
			for i := range dst {
				f := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
				dst[i] = dtype.F16ToF32(dtype.F32ToF16(f))
			}
		default:
			for i := range dst {
				dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			}
		}
	case dtype.BF16:
		if to == dtype.F16 {
			for i := range dst {
				dst[i] = dtype.F16ToF32(dtype.F32ToF16(dtype.BF16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))))
			}
			return
		}
		for i := range dst {
			dst[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case dtype.F16:
		if to == dtype.BF16 {
			for i := range dst {
				dst[i] = dtype.BF16ToF32(dtype.F32ToBF16(dtype.F16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))))
			}
			return
		}
		for i := range dst {
			dst[i] = dtype.F16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	default:
		panic("convert: toFloat32: unsupported dtype " + src.String())
	}
}

// castBytes converts n little-endian elements of raw from dtype src to dtype
// to into dst (n·to.Size() bytes). src and to are F32, BF16 or F16, and
// differ.
func castBytes(dst, raw []byte, n int, src, to dtype.DType) {
	load := func(i int) float32 {
		switch src {
		case dtype.F32:
			return math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		case dtype.BF16:
			return dtype.BF16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
		default:
			return dtype.F16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	}
	switch to {
	case dtype.F32:
		for i := range n {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(load(i)))
		}
	case dtype.BF16:
		if src == dtype.F32 {
			for i := range n {
				f := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
				binary.LittleEndian.PutUint16(dst[2*i:], dtype.F32ToBF16(f))
			}
			return
		}
		for i := range n {
			binary.LittleEndian.PutUint16(dst[2*i:], dtype.F32ToBF16(load(i)))
		}
	case dtype.F16:
		for i := range n {
			binary.LittleEndian.PutUint16(dst[2*i:], dtype.F32ToF16(load(i)))
		}
	default:
		panic("convert: castBytes: unsupported dtype " + to.String())
	}
}

// firstNonFinite returns the index of the first NaN or ±Inf in v, or -1.
func firstNonFinite(v []float32) int {
	for i, f := range v {
		if math.Float32bits(f)&0x7f800000 == 0x7f800000 {
			return i
		}
	}
	return -1
}

// putFloat32s encodes v little-endian into a new byte slice.
func putFloat32s(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

// blockAbsmax computes the absmax of each block of src exactly as
// bnb.QuantizeBlocks does (the largest |x| ignoring NaN; -MaxFloat32 for
// an all-NaN block; 0 if the largest |x| is subnormal, which the GPU
// flushes), without encoding: the statistics pass needs only these.
// A test checks it against bnb.QuantizeBlocks.
func blockAbsmax(absmax, src []float32, blocksize int) {
	for b := 0; len(src) > 0; b++ {
		blk := src[:min(blocksize, len(src))]
		src = src[len(blk):]
		var mx uint32 // |x| as bits: unsigned order is numeric order, NaNs above +Inf
		for _, v := range blk {
			mx = max(mx, math.Float32bits(v)&0x7fffffff)
		}
		if mx > 0x7f800000 { // a NaN: the largest of the others
			mx = 0
			seen := false
			for _, v := range blk {
				if m := math.Float32bits(v) & 0x7fffffff; m <= 0x7f800000 {
					mx = max(mx, m)
					seen = true
				}
			}
			if !seen {
				absmax[b] = -math.MaxFloat32
				continue
			}
		}
		if mx < 0x00800000 {
			mx = 0
		}
		absmax[b] = math.Float32frombits(mx)
	}
}
