package verify

import (
	"encoding/binary"
	"math"

	"github.com/qconv/qconv/formats/dtype"
)

// castable reports whether values of dtype d can be compared as floats.
func castable(d dtype.DType) bool {
	switch d {
	case dtype.F16, dtype.BF16, dtype.F32, dtype.F64:
		return true
	}
	return false
}

// decode widens the raw little-endian values in b, of dtype from, to
// float32 after rounding them to dtype to (round to nearest even, as
// torch's Tensor.to does; F64 goes through float32 first, as torch does for
// bf16 and f16). Both dtypes must be castable; to must not be F64.
func decode(dst []float32, b []byte, from, to dtype.DType) {
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
	roundTo(dst, from, to)
}

// roundTo rounds values that came from dtype from to dtype to, in place.
func roundTo(x []float32, from, to dtype.DType) {
	switch {
	case to == from || to == dtype.F32:
	case to == dtype.BF16 && from != dtype.BF16:
		for i, v := range x {
			x[i] = dtype.BF16ToF32(dtype.F32ToBF16(v))
		}
	case to == dtype.F16:
		for i, v := range x {
			x[i] = dtype.F16ToF32(dtype.F32ToF16(v))
		}
	}
}

// encode writes x as dtype d (F32, BF16 or F16) to b, rounding to nearest
// even.
func encode(b []byte, x []float32, d dtype.DType) {
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
