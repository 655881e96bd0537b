package dtype_test

import (
	"encoding/binary"
	"math"
	"path/filepath"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

func TestParseRoundTrip(t *testing.T) {
	all := dtype.All()
	if len(all) != 22 {
		t.Fatalf("got %d dtypes, want the 22 of the reference implementation", len(all))
	}
	for i, d := range all {
		got, ok := dtype.Parse(d.String())
		if !ok || got != d {
			t.Errorf("Parse(%q) = %v, %v", d.String(), got, ok)
		}
		if i > 0 && all[i-1] >= d {
			t.Errorf("All() not in enum order at %v", d)
		}
	}
	if _, ok := dtype.Parse("F128"); ok {
		t.Error("Parse accepted an unknown dtype")
	}
	if dtype.F4.Bits() != 4 || dtype.F6_E2M3.Bits() != 6 || dtype.F4.Size() != 0 || dtype.BF16.Size() != 2 || dtype.C64.Size() != 8 {
		t.Error("wrong element sizes")
	}
}

func TestTorchNames(t *testing.T) {
	for _, d := range []dtype.DType{dtype.BOOL, dtype.U8, dtype.I8, dtype.I16, dtype.I32, dtype.I64, dtype.F16, dtype.BF16, dtype.F32, dtype.F64} {
		got, ok := dtype.FromTorchName("torch." + d.TorchName())
		if !ok || got != d {
			t.Errorf("FromTorchName(torch.%s) = %v, %v", d.TorchName(), got, ok)
		}
	}
	if _, ok := dtype.FromTorchName("complex32"); ok {
		t.Error("accepted unknown torch dtype")
	}
}

func TestBF16Rounding(t *testing.T) {
	cases := []struct {
		in   uint32
		want uint16
	}{
		{0x3f800000, 0x3f80}, // 1.0
		{0x3f808000, 0x3f80}, // tie, even stays
		{0x3f818000, 0x3f82}, // tie, odd rounds up
		{0x3f808001, 0x3f81}, // above tie
		{0x7f7fffff, 0x7f80}, // max float rounds to +Inf
		{0xff800000, 0xff80}, // -Inf
		{0x80000000, 0x8000}, // -0
		{0x7fc00001, 0x7fc0}, // NaN
		{0xffc00000, 0x7fc0}, // negative NaN: torch writes 0x7FC0
		{0x7f800001, 0x7fc0}, // signalling NaN
	}
	for _, c := range cases {
		if got := dtype.F32ToBF16(math.Float32frombits(c.in)); got != c.want {
			t.Errorf("F32ToBF16(%#08x) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	for _, b := range []uint16{0, 0x3f80, 0xbf80, 0x0001, 0x7f7f} {
		if got := dtype.F32ToBF16(dtype.BF16ToF32(b)); got != b {
			t.Errorf("bf16 %#04x does not round-trip: %#04x", b, got)
		}
	}
}

func TestF16RoundTrip(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := dtype.F16ToF32(uint16(h))
		if f != f { // NaN: payloads may change, NaN must stay NaN
			if g := dtype.F16ToF32(dtype.F32ToF16(f)); g == g {
				t.Fatalf("NaN %#04x lost", h)
			}
			continue
		}
		if got := dtype.F32ToF16(f); got != uint16(h) {
			t.Fatalf("f16 %#04x round-trips to %#04x", h, got)
		}
	}
}

// The golden models were cast by torch: tiny-llama-b-f32 holds F32 values that
// are not bf16-representable, and transformers stored its embeddings and norms
// as BF16 (nf4-dq-u8, dtype=bfloat16) and F16 (fp4-u8-f16, dtype=float16).
func TestCastMatchesTorch(t *testing.T) {
	root := filepath.Join("..", "..", "testdata", "golden", "models")
	src := readAll(t, filepath.Join(root, "tiny-llama-b-f32", "model.safetensors"))
	for _, c := range []struct {
		dir  string
		dt   dtype.DType
		cast func(float32) uint16
	}{
		{"tiny-llama-b-f32-nf4-dq-u8", dtype.BF16, dtype.F32ToBF16},
		{"tiny-llama-b-f32-fp4-u8-f16", dtype.F16, dtype.F32ToF16},
	} {
		dst := readAll(t, filepath.Join(root, c.dir, "model.safetensors"))
		checked := 0
		for name, want := range dst {
			if want.dt != c.dt {
				continue
			}
			in := src[name]
			if in.dt != dtype.F32 || len(in.data) != 2*len(want.data) {
				t.Fatalf("%s: source %s has %d bytes", name, in.dt, len(in.data))
			}
			for i := 0; i < len(want.data)/2; i++ {
				f := math.Float32frombits(binary.LittleEndian.Uint32(in.data[4*i:]))
				if got, w := c.cast(f), binary.LittleEndian.Uint16(want.data[2*i:]); got != w {
					t.Fatalf("%s/%s[%d]: cast(%g) = %#04x, torch wrote %#04x", c.dir, name, i, f, got, w)
				}
			}
			checked++
		}
		if checked == 0 {
			t.Fatalf("%s: no %s tensors compared", c.dir, c.dt)
		}
	}
}

type tensor struct {
	dt   dtype.DType
	data []byte
}

func readAll(t *testing.T, path string) map[string]tensor {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]tensor{}
	for _, ti := range f.Tensors() {
		b, err := f.ReadTensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[ti.Name] = tensor{ti.DType, b}
	}
	return out
}
