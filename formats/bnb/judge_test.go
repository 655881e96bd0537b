package bnb

import (
	"errors"
	"math"
	"testing"
)

func TestJudge(t *testing.T) {
	for _, sh := range [][]int64{{16384}, {2, 64, 128}, {-1, 4}, {1 << 40, 1 << 40}} {
		if _, err := CheckShape(sh, true); !errors.Is(err, ErrWeight) {
			t.Errorf("shape %v: %v", sh, err)
		}
	}
	if n, err := CheckShape([]int64{3, 5}, true); n != 15 || err != nil {
		t.Errorf("[3 5]: %d, %v", n, err)
	}
	if n, err := CheckShape([]int64{16384}, false); n != 16384 || err != nil {
		t.Errorf("[16384] outside a model: %d, %v", n, err)
	}
	if CheckPackedBytes(15, 8) != nil || CheckPackedBytes(15, 9) == nil || CheckPackedBytes(15, 7) == nil {
		t.Error("packed bytes of 15 elements")
	}
	nan := float32(math.NaN())
	for _, v := range [][]float32{{1, nan}, {float32(math.Inf(1))}, {0.5, -0.5}} {
		if !errors.Is(CheckStats("absmax", v), ErrWeight) {
			t.Errorf("%v accepted", v)
		}
	}
	if CheckStats("absmax", []float32{0, 1, 2}) != nil {
		t.Error("good stats refused")
	}
	if CheckOffset(QuantState{DoubleQuant: true, NestedOffset: nan}) == nil {
		t.Error("NaN offset accepted")
	}
}
