package bnb

import (
	"errors"
	"fmt"
	"math"
)

// Judging a stored 4-bit weight.
//
// The checks below are the one judgement of a bitsandbytes 4-bit weight as
// a checkpoint stores it that qconv's audit (rules BNB004, BNB006,
// BNB013), dequant and verify share, so that whatever audit calls an error
// the other two refuse. They add to what ParseQuantState checks of the
// JSON itself.

// ErrWeight is matched (errors.Is) by every error of CheckShape,
// CheckPackedBytes and CheckStats.
var ErrWeight = errors.New("bnb: invalid stored 4-bit weight")

type weightError struct{ msg string }

func (e *weightError) Error() string        { return e.msg }
func (e *weightError) Is(target error) bool { return target == ErrWeight }

func weightErr(format string, args ...any) error {
	return &weightError{fmt.Sprintf(format, args...)}
}

// CheckShape checks the quant state's "shape": no negative dimension, an
// element count that fits in an int64, and, in a model (model true: a
// checkpoint with a config.json, which transformers loads), 2-D:
// transformers quantizes the weights of Linear layers (and GPT-2's
// Conv1D), which are 2-D; a 4-bit weight of another rank cannot be loaded
// into its layer. (bitsandbytes itself quantizes tensors of any shape, as
// a bare file of its tensors may hold.) It returns the element count.
func CheckShape(shape []int64, model bool) (int64, error) {
	if model && len(shape) != 2 {
		return 0, weightErr("the quant state's shape %v is not 2-D (bitsandbytes quantizes the 2-D weights of Linear layers)", shape)
	}
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, weightErr("the quant state's shape %v has a negative dimension", shape)
		}
		if d != 0 && n > math.MaxInt64/4/d {
			return 0, weightErr("the quant state's shape %v is too large", shape)
		}
		n *= d
	}
	return n, nil
}

// CheckPackedBytes checks that a packed weight of the given byte length
// holds exactly the codes of n elements (PackedBytes(n)): fewer cannot be
// dequantized, more means the data and the state belong to different
// weights.
func CheckPackedBytes(n, bytes int64) error {
	if want := PackedBytes(n); bytes != want {
		return weightErr("the packed weight has %d bytes, but the quant state's %d elements need ceil(%d/2) = %d", bytes, n, n, want)
	}
	return nil
}

// CheckStats checks quantization statistics: every value of absmax (the
// float32 scales of a weight without double quantization) and of nested
// (the float32 nested_absmax of a double-quantized one) must be finite and
// not negative (bitsandbytes computes them as maxima of absolute values),
// and the quant state's nested offset (a mean of absmax values) finite. A
// NaN there makes every dequantized value of its blocks NaN. name says
// which tensor the values come from; the error gives the first bad index.
func CheckStats(name string, vals []float32) error {
	for i, v := range vals {
		if v != v || math.IsInf(float64(v), 0) || v < 0 {
			return weightErr("%s[%d] is %v: quantization statistics must be finite and not negative", name, i, v)
		}
	}
	return nil
}

// CheckOffset checks the quant state's nested offset (see CheckStats).
func CheckOffset(s QuantState) error {
	if !s.DoubleQuant {
		return nil
	}
	if v := float64(s.NestedOffset); math.IsNaN(v) || math.IsInf(v, 0) {
		return weightErr("the quant state's nested_offset is %v: it must be finite", s.NestedOffset)
	}
	return nil
}
