// Package dtype is the table of tensor element types used by safetensors
// files, and the float conversions qconv needs between them.
//
// The type list and its order follow the reference safetensors
// implementation (huggingface/safetensors, Rust crate): the order matters
// because the reference writer sorts tensors by dtype, descending in this
// order. Sizes are in bits so that the sub-byte types F4 and F6_* can be
// described exactly.
//
// This package does not know about files; see formats/safetensors for that.
package dtype

import (
	"fmt"
	"math"

	"github.com/x448/float16"
)

// DType is a safetensors element type. The zero value is Invalid.
type DType uint8

// The safetensors dtypes, in the reference implementation's enum order.
const (
	Invalid DType = iota
	BOOL
	F4
	F6_E2M3
	F6_E3M2
	U8
	I8
	F8_E5M2
	F8_E4M3
	F8_E8M0
	F8_E4M3FNUZ
	F8_E5M2FNUZ
	I16
	U16
	F16
	BF16
	I32
	U32
	F32
	C64
	F64
	I64
	U64
	numDTypes
)

var names = [numDTypes]string{
	"", "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3",
	"F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16",
	"I32", "U32", "F32", "C64", "F64", "I64", "U64",
}

var bits = [numDTypes]int{
	0, 8, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64, 64,
}

// All returns every valid dtype in enum order.
func All() []DType {
	out := make([]DType, 0, numDTypes-1)
	for d := BOOL; d < numDTypes; d++ {
		out = append(out, d)
	}
	return out
}

// Parse returns the dtype named s (as written in a safetensors header, for
// example "BF16"), or Invalid and false.
func Parse(s string) (DType, bool) {
	for d := BOOL; d < numDTypes; d++ {
		if names[d] == s {
			return d, true
		}
	}
	return Invalid, false
}

// String returns the safetensors name of d ("F32", "BF16", ...).
func (d DType) String() string {
	if d >= numDTypes || d == Invalid {
		return fmt.Sprintf("DType(%d)", uint8(d))
	}
	return names[d]
}

// Valid reports whether d is one of the safetensors dtypes.
func (d DType) Valid() bool { return d > Invalid && d < numDTypes }

// Bits is the size of one element in bits (4 for F4, 6 for F6_*).
func (d DType) Bits() int {
	if !d.Valid() {
		return 0
	}
	return bits[d]
}

// Size is the size of one element in bytes, or 0 for the sub-byte types.
func (d DType) Size() int {
	if d.Bits()%8 != 0 {
		return 0
	}
	return d.Bits() / 8
}

// IsFloat reports whether d is a real floating-point type that qconv can
// convert to float32 (F16, BF16, F32, F64).
func (d DType) IsFloat() bool {
	switch d {
	case F16, BF16, F32, F64:
		return true
	}
	return false
}

// TorchName is the name torch and transformers use for d in JSON
// ("bfloat16", "float16", "float32", "uint8", ...), or "" if none.
func (d DType) TorchName() string {
	switch d {
	case BOOL:
		return "bool"
	case U8:
		return "uint8"
	case I8:
		return "int8"
	case I16:
		return "int16"
	case I32:
		return "int32"
	case I64:
		return "int64"
	case F16:
		return "float16"
	case BF16:
		return "bfloat16"
	case F32:
		return "float32"
	case F64:
		return "float64"
	}
	return ""
}

// FromTorchName maps a torch dtype name ("bfloat16", "torch.float16",
// "float", "half") to a DType.
func FromTorchName(s string) (DType, bool) {
	if len(s) > 6 && s[:6] == "torch." {
		s = s[6:]
	}
	switch s {
	case "bool":
		return BOOL, true
	case "uint8":
		return U8, true
	case "int8":
		return I8, true
	case "int16", "short":
		return I16, true
	case "int32", "int":
		return I32, true
	case "int64", "long":
		return I64, true
	case "float16", "half":
		return F16, true
	case "bfloat16":
		return BF16, true
	case "float32", "float":
		return F32, true
	case "float64", "double":
		return F64, true
	}
	return Invalid, false
}

// BF16ToF32 widens a bfloat16 bit pattern to float32 (exact).
func BF16ToF32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// F32ToBF16 rounds f to bfloat16 with round-to-nearest-even, as torch does.
// Every NaN becomes 0x7FC0, the pattern torch writes.
func F32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN
		return 0x7fc0
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

// F16ToF32 widens an IEEE half-precision bit pattern to float32 (exact).
func F16ToF32(h uint16) float32 { return float16.Frombits(h).Float32() }

// F32ToF16 rounds f to IEEE half precision with round-to-nearest-even.
func F32ToF16(f float32) uint16 { return float16.Fromfloat32(f).Bits() }
