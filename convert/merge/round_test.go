package merge

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

// refRound rounds the exact value x to format f with math/big (round to
// nearest even at f.p bits; the tests stay in f's normal range, checked)
// and returns it as a float64, ±Inf beyond f's largest finite value.
func refRound(t *testing.T, x *big.Float, f format) float64 {
	t.Helper()
	if x.Sign() == 0 {
		v, _ := x.Float64()
		return v
	}
	var r big.Float
	r.SetPrec(uint(f.p)).SetMode(big.ToNearestEven)
	r.Set(x)
	v, _ := r.Float64()
	if a := math.Abs(v); a != 0 && a < math.Ldexp(1, f.emin) {
		t.Fatalf("refRound: %v is subnormal in the format; the reference does not model that", v)
	}
	if math.Abs(v) >= math.Ldexp(1, f.emax+1) {
		return math.Inf(r.Sign())
	}
	return v
}

func exactSum(vals ...float64) *big.Float {
	s := new(big.Float).SetPrec(4000)
	for _, v := range vals {
		s.Add(s, new(big.Float).SetPrec(4000).SetFloat64(v))
	}
	return s
}

// TestAddRounded checks round_out(w + delta) against math/big for random
// pairs and for sums that fall exactly on, or next to, a rounding midpoint
// of the output format, where a double rounding (through float64, or
// float32 as torch does) goes wrong.
func TestAddRounded(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		d dtype.DType
		f format
	}{{dtype.BF16, fmtBF16}, {dtype.F16, fmtF16}, {dtype.F32, fmtF32}} {
		bad := 0
		check := func(w float64, delta float32) {
			got := addRounded(w, delta, tc.f)
			want := refRound(t, exactSum(w, float64(delta)), tc.f)
			if got != want && bad < 5 {
				bad++
				t.Errorf("%v: round(%v + %v) = %v, want %v", tc.d, w, delta, got, want)
			}
			if tc.d == dtype.BF16 {
				x, e := twoSum(w, float64(delta))
				if b, ok := bf16Bits(x, e); ok && b != uint16(math.Float32bits(float32(want))>>16) && bad < 5 {
					bad++
					t.Errorf("bf16Bits(%v + %v) = %#04x, want %v", w, delta, b, want)
				}
			}
		}
		for range 30000 {
			// w in the output format, delta any float32, similar or
			// very different magnitudes.
			// |w| >= 0.25 and |delta| mostly smaller keep the sums in the
			// normal range of every format (f16's starts at 2^-14).
			w := refRound(t, exactSum(math.Copysign(0.25+math.Abs(rng.NormFloat64()), rng.NormFloat64())), tc.f)
			delta := float32(rng.NormFloat64() * math.Ldexp(0.05, -rng.IntN(40)))
			check(w, delta)
		}
		// Midpoints: w + delta = m ± tiny, with m halfway between two
		// neighbours of the format.
		for range 5000 {
			w := refRound(t, exactSum(math.Copysign(0.25+math.Abs(rng.NormFloat64()), rng.NormFloat64())), tc.f)
			_, e := math.Frexp(w)
			ulp := math.Ldexp(1, e-tc.f.p)
			mid := w + ulp/2 // exact in float64
			for _, tiny := range []float64{0, math.Ldexp(ulp, -30), -math.Ldexp(ulp, -30), math.Ldexp(ulp, -60)} {
				delta := float32(mid - w + tiny)
				check(w, delta)
			}
		}
	}
}

// TestDeltaKernel checks mergeInto against an exact computation with
// math/big, for random factors and for factors built so that s·Σ lands
// within a few float64 ulps of a float32 midpoint (the exact fallback).
func TestDeltaKernel(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, r := range []int{1, 2, 7, 16, 64} {
		rows, cols := 3, 50
		f := &factors{r: r, l: make([]float64, rows*r), t: make([]float64, cols*r)}
		for i := range f.l {
			f.l[i] = float64(float32(rng.NormFloat64() * 0.05))
		}
		for i := range f.t {
			f.t[i] = float64(float32(rng.NormFloat64() * 0.05))
		}
		// Row 2 (r >= 3): L = [1, 1, 1, 0...] and column c: R = [m, h,
		// ±t, 0...] with m a float32, h half its ulp and t far below
		// float64's precision at m: the float64 sum is exactly a float32
		// midpoint (ties to even), the exact sum is just above or below
		// it. Only the error bound sends these to the exact fallback.
		if r >= 3 {
			for k := range r {
				f.l[2*r+k] = 0
			}
			f.l[2*r], f.l[2*r+1], f.l[2*r+2] = 1, 1, 1
			for c := 0; c < cols; c++ {
				m := float64(float32(1 + rng.Float64()))
				for k := range r {
					f.t[c*r+k] = 0
				}
				f.t[c*r], f.t[c*r+1] = m, 0x1p-24
				f.t[c*r+2] = []float64{0x1p-80, -0x1p-80, 0}[c%3]
			}
		}
		f.lmax = rowStat(f.l, r, func(acc, x float64) float64 { return max(acc, x) })
		f.rsum = rowStat(f.t, r, func(acc, x float64) float64 { return acc + x })
		for _, s := range []float32{1, 2, 1.5, float32(6 / math.Sqrt(2)), 0.625} {
			for _, out := range []dtype.DType{dtype.BF16, dtype.F32} {
				of := formatOf(out)
				w := make([]float32, rows*cols)
				for i := range w {
					if i/cols != 2 || out != dtype.F32 {
						// Row 2 of the float32 output keeps W = 0, so that
						// the output is the delta itself.
						w[i] = float32(refRound(t, exactSum(rng.NormFloat64()*0.02), of))
					}
				}
				p := make([]byte, out.Size()*len(w))
				if err := f.mergeInto(p, w, 0, int64(cols), s, out, nil); err != nil {
					t.Fatal(err)
				}
				for i := range w {
					row, col := i/cols, i%cols
					sum := new(big.Float).SetPrec(4000)
					for k := 0; k < r; k++ {
						sum.Add(sum, new(big.Float).SetPrec(4000).Mul(big.NewFloat(float64(f.l[row*r+k])), big.NewFloat(float64(f.t[col*r+k]))))
					}
					sum.Mul(sum, big.NewFloat(float64(s)))
					delta := refRound(t, sum, fmtF32)
					want := refRound(t, exactSum(float64(w[i]), delta), of)
					var got float64
					if out == dtype.BF16 {
						got = float64(dtype.BF16ToF32(uint16(p[2*i]) | uint16(p[2*i+1])<<8))
					} else {
						got = float64(math.Float32frombits(uint32(p[4*i]) | uint32(p[4*i+1])<<8 | uint32(p[4*i+2])<<16 | uint32(p[4*i+3])<<24))
					}
					if got != want {
						t.Fatalf("r=%d s=%v %v element (%d,%d): got %v, want %v", r, s, out, row, col, got, want)
					}
				}
			}
		}
	}
}

// TestRoundToTie checks the tie breaking of roundTo on its own: x exactly
// halfway between two values of the format, e the sign of the rest. (For
// the sums of a merge, x is a midpoint only when e is 0: a float32 delta
// cannot reach a midpoint of W's format and also reach 2^-53 below W. The
// rule is kept so that roundTo is correct for any x+e.)
func TestRoundToTie(t *testing.T) {
	for _, tc := range []struct {
		x, e, want float64
		f          format
	}{
		{1 + 0x1p-8, 0, 1, fmtBF16},                     // tie to even: down
		{1 + 0x1p-8, 0x1p-70, 1 + 0x1p-7, fmtBF16},      // above the tie
		{1 + 3*0x1p-8, 0, 1 + 4*0x1p-8, fmtBF16},        // tie to even: up
		{1 + 3*0x1p-8, -0x1p-70, 1 + 2*0x1p-8, fmtBF16}, // below the tie
		{-(1 + 0x1p-8), -0x1p-70, -(1 + 0x1p-7), fmtBF16},
		{1 + 0x1p-24, 0x1p-80, 1 + 0x1p-23, fmtF32},
		{1 + 0x1p-11, 0x1p-80, 1 + 0x1p-10, fmtF16},
		{65520, 0, math.Inf(1), fmtF16}, // halfway to 2^16 overflows
		{65519, 0, 65504, fmtF16},
	} {
		if got := roundTo(tc.x, tc.e, tc.f); got != tc.want {
			t.Errorf("roundTo(%v, %v, %v) = %v, want %v", tc.x, tc.e, tc.f, got, tc.want)
		}
		if tc.f == fmtBF16 {
			if b, ok := bf16Bits(tc.x, tc.e); !ok || b != uint16(math.Float32bits(float32(tc.want))>>16) {
				t.Errorf("bf16Bits(%v, %v) = %#04x, %v; want %v", tc.x, tc.e, b, ok, tc.want)
			}
		}
	}
}

// TestExactRound32 checks the exact fallback on its own, at midpoints.
func TestExactRound32(t *testing.T) {
	// 1 + 2^-24 is the midpoint between 1 and its float32 successor: it
	// rounds to even (1); a hair above rounds up.
	if got := exactRound32(1, []float64{1, 0x1p-24}, []float64{1, 1}); got != 1 {
		t.Errorf("tie: got %v, want 1", got)
	}
	if got := exactRound32(1, []float64{1, 0x1p-24, 0x1p-60}, []float64{1, 1, 1}); got != 1+0x1p-23 {
		t.Errorf("above the tie: got %v, want %v", got, 1+0x1p-23)
	}
	if got := exactRound32(1, []float64{0x1p-140}, []float64{0x1.8p-10}); got != float32(math.Ldexp(1, -149)) {
		t.Errorf("subnormal: got %v, want 2^-149", got)
	}
}
