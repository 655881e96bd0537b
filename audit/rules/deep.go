package rules

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

// chunkBytes is how much tensor data the deep rules read at a time; their
// memory use does not grow with tensor size.
const chunkBytes = 1 << 20

// scanFloats streams the values of a floating-point tensor (F16, BF16,
// F32, F64) to fn as float64s, chunk by chunk, stopping early when fn
// returns false. start is the index of vals[0] in the tensor.
func scanFloats(t *audit.Tensor, fn func(start int64, vals []float64) bool) error {
	size := t.DType.Size()
	if !t.DType.IsFloat() || size == 0 {
		return fmt.Errorf("tensor %q is %s, not a float type", t.Name, t.DType)
	}
	r := t.Section()
	buf := make([]byte, min(chunkBytes/int64(size), max(t.NumElements(), 1))*int64(size))
	vals := make([]float64, len(buf)/size)
	var start int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			m := n / size
			for i := range m {
				b := buf[i*size:]
				switch t.DType {
				case dtype.F16:
					vals[i] = float64(dtype.F16ToF32(binary.LittleEndian.Uint16(b)))
				case dtype.BF16:
					vals[i] = float64(dtype.BF16ToF32(binary.LittleEndian.Uint16(b)))
				case dtype.F32:
					vals[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
				case dtype.F64:
					vals[i] = math.Float64frombits(binary.LittleEndian.Uint64(b))
				}
			}
			if !fn(start, vals[:m]) {
				return nil
			}
			start += int64(m)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading tensor %q: %w", t.Name, err)
		}
	}
}

// absmaxValues streams the float32 absmax of each block of a quantized
// weight to fn: read directly without double quantization, decoded
// through the stored nested map and nested absmax with it, exactly as
// bitsandbytes dequantizes them. ok is false when the group is too broken
// to decode (other BNB rules report why).
func absmaxValues(c *audit.Checkpoint, g *audit.QuantGroup, fn func(start int64, vals []float64) bool) (ok bool, err error) {
	a := g.Absmax
	if g.State == nil || a == nil {
		return false, nil
	}
	if !g.State.DoubleQuant {
		if a.DType != dtype.F32 {
			return false, nil
		}
		return true, scanFloats(a, fn)
	}
	if a.DType != dtype.U8 || g.NestedAbsmax == nil || g.NestedQuantMap == nil ||
		!isShape(g.NestedQuantMap, dtype.F32, 256) || g.NestedAbsmax.DType != dtype.F32 {
		return false, nil
	}
	nb := (a.NumElements() + 255) / 256
	if g.NestedAbsmax.NumElements() != nb || nb > 1<<24 {
		return false, nil
	}
	code, err := readF32s(c, g.NestedQuantMap, 256)
	if err != nil {
		return false, err
	}
	nested, err := readF32s(c, g.NestedAbsmax, int(nb))
	if err != nil {
		return false, err
	}
	off := g.State.NestedOffset
	r := a.Section()
	buf := make([]byte, min(chunkBytes, max(a.Size(), 1)))
	vals := make([]float64, len(buf))
	var start int64
	for {
		n, err := io.ReadFull(r, buf)
		for i := range n {
			idx := start + int64(i)
			vals[i] = float64(code[buf[i]]*nested[idx/256] + off)
		}
		if n > 0 && !fn(start, vals[:n]) {
			return true, nil
		}
		start += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return true, nil
		}
		if err != nil {
			return true, fmt.Errorf("reading tensor %q: %w", a.Name, err)
		}
	}
}

// isBias reports whether a tensor name is a bias, which may legitimately
// be all zeros.
func isBias(name string) bool { return strings.HasSuffix(name, ".bias") || name == "bias" }
