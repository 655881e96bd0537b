package bnb

import (
	"errors"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestMarshalPythonFloat checks nested_offset formatting against strings
// printed by CPython 3 (json.dumps(float(np.float32(v))), i.e. repr of the
// widened double), including both ends of repr's positional range.
func TestMarshalPythonFloat(t *testing.T) {
	for _, tc := range []struct {
		bits uint32
		want string
	}{
		{0x00000000, "0.0"},
		{0x80000000, "-0.0"},
		{0x3727c5ac, "9.999999747378752e-06"},
		{0x38d1b717, "9.999999747378752e-05"},
		{0x38d1b718, "0.00010000000474974513"},
		{0x390164ef, "0.00012339999375399202"},
		{0x5a0e1bc9, "9999999198822400.0"},
		{0x5a0e1bca, "1.0000000272564224e+16"},
		{0x5bb1a2bc, "9.999999843067494e+16"},
		{0x58635fa9, "999999986991104.0"},
		{0x3fc00000, "1.5"},
		{0x3f800000, "1.0"},
		{0x4b000000, "8388608.0"},
		{0x47f12000, "123456.0"},
		{0x7f7fffff, "3.4028234663852886e+38"},
		{0x00000001, "1.401298464324817e-45"},
		{0x3d54b6f9, "0.051932308822870255"},
		{0xb48637bd, "-2.499999993688107e-07"},
		{0x3dcccccd, "0.10000000149011612"},
		{0x42c80000, "100.0"},
		{0x387ba882, "5.999999848427251e-05"},
		{0x7fc00000, "NaN"},
		{0x7f800000, "Infinity"},
		{0xff800000, "-Infinity"},
	} {
		if got := string(appendPyFloat(nil, float64(math.Float32frombits(tc.bits)))); got != tc.want {
			t.Errorf("%#08x: got %s, want %s", tc.bits, got, tc.want)
		}
	}
}

func TestMarshalPython(t *testing.T) {
	// Expected strings printed by CPython's json.dumps.
	for _, tc := range []struct {
		s    QuantState
		want string
	}{
		{QuantState{QuantType: FP4, Blocksize: 4096, DType: "float16", Shape: []int64{}},
			`{"quant_type": "fp4", "blocksize": 4096, "dtype": "float16", "shape": []}`},
		{QuantState{QuantType: NF4, Blocksize: 32, DType: "float32", Shape: []int64{2, 3, 4},
			DoubleQuant: true, NestedBlocksize: 256, NestedDType: "float32", NestedOffset: math.Float32frombits(0x3727c5ac)},
			`{"quant_type": "nf4", "blocksize": 32, "dtype": "float32", "shape": [2, 3, 4], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 9.999999747378752e-06}`},
	} {
		got := tc.s.MarshalPython()
		if string(got) != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
		back, err := ParseQuantState(got)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, tc.s) {
			t.Errorf("round trip: %+v, want %+v", back, tc.s)
		}
	}
}

func TestParseQuantStateErrors(t *testing.T) {
	const ok = `"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4, 16]`
	for _, tc := range []struct {
		in, field string
	}{
		{``, ""},
		{`[]`, ""},
		{`{` + ok + `}x`, ""},
		{`{` + ok + `} {}`, ""},
		{`{` + ok + `, "extra": 1}`, "extra"},
		{`{` + ok + `, "quant_type": "nf4"}`, "quant_type"},
		{`{"blocksize": 64, "dtype": "bfloat16", "shape": [4]}`, "quant_type"},
		{`{"quant_type": "nf4", "dtype": "bfloat16", "shape": [4]}`, "blocksize"},
		{`{"quant_type": "nf4", "blocksize": 64, "shape": [4]}`, "dtype"},
		{`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16"}`, "shape"},
		{`{"quant_type": "int4", "blocksize": 64, "dtype": "bfloat16", "shape": [4]}`, "quant_type"},
		{`{"quant_type": 4, "blocksize": 64, "dtype": "bfloat16", "shape": [4]}`, "quant_type"},
		{`{"quant_type": "nf4", "blocksize": 48, "dtype": "bfloat16", "shape": [4]}`, "blocksize"},
		{`{"quant_type": "nf4", "blocksize": 64.0, "dtype": "bfloat16", "shape": [4]}`, "blocksize"},
		{`{"quant_type": "nf4", "blocksize": 64, "dtype": "float64", "shape": [4]}`, "dtype"},
		{`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [-4]}`, "shape"},
		{`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": 4}`, "shape"},
		{`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4.5]}`, "shape"},
		{`{` + ok + `, "nested_blocksize": 256}`, "nested_dtype"},
		{`{` + ok + `, "nested_blocksize": 256, "nested_dtype": "float32"}`, "nested_offset"},
		{`{` + ok + `, "nested_blocksize": 128, "nested_dtype": "float32", "nested_offset": 0.5}`, "nested_blocksize"},
		{`{` + ok + `, "nested_blocksize": 256, "nested_dtype": "float16", "nested_offset": 0.5}`, "nested_dtype"},
		{`{` + ok + `, "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1e39}`, "nested_offset"},
		{`{` + ok + `, "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": NaN}`, "nested_offset"},
		{`{` + ok + `, "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": "0.5"}`, "nested_offset"},
	} {
		_, err := ParseQuantState([]byte(tc.in))
		var qe *QuantStateError
		if !errors.As(err, &qe) || !errors.Is(err, ErrQuantState) {
			t.Errorf("%s: error %v, want a *QuantStateError", tc.in, err)
			continue
		}
		if qe.Field != tc.field {
			t.Errorf("%s: field %q, want %q (%v)", tc.in, qe.Field, tc.field, err)
		}
		if !strings.HasPrefix(err.Error(), "bnb: ") {
			t.Errorf("error %q does not start with the package name", err)
		}
	}
	// Formatting and key order are free.
	s, err := ParseQuantState([]byte("{\n \"shape\":[4,16],\"dtype\":\"bfloat16\",\"blocksize\":64,\"quant_type\":\"nf4\"}\n"))
	if err != nil || s.QuantType != NF4 || s.Blocksize != 64 || !reflect.DeepEqual(s.Shape, []int64{4, 16}) {
		t.Errorf("reordered keys: %+v, %v", s, err)
	}
}

// FuzzParseQuantState checks that ParseQuantState never panics and that
// whatever it accepts survives MarshalPython unchanged. It is seeded with
// every quant-state blob of the golden files.
func FuzzParseQuantState(f *testing.F) {
	for _, path := range []string{goldenVectors, goldenVectorsWide} {
		g := gtOpenF(f, path)
		names := slices.Sorted(maps.Keys(g.tensors))
		for _, name := range names {
			if strings.Contains(name, ".quant_state.bitsandbytes__") {
				f.Add(g.tensors[name].data)
			}
		}
	}
	f.Add([]byte(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [], "extra": {}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseQuantState(b)
		if err != nil {
			if !errors.Is(err, ErrQuantState) {
				t.Fatalf("error %v does not match ErrQuantState", err)
			}
			return
		}
		out := s.MarshalPython()
		s2, err := ParseQuantState(out)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if !reflect.DeepEqual(s, s2) || string(s2.MarshalPython()) != string(out) {
			t.Fatalf("round trip changed %+v to %+v", s, s2)
		}
	})
}
