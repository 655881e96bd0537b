package merge

import (
	"math"
	"math/big"

	"github.com/qconv/qconv/formats/dtype"
)

// The numerics of a merge.
//
// PEFT (peft 0.21, lora.Linear.merge with safe_merge=False, the default of
// merge_and_unload) computes, for a weight W in the base dtype and float32
// factors A [r, in] and B [out, r]:
//
//	delta = float32(B @ A) * float32(scaling)    (a float32 tensor)
//	W    += delta                                 (in float32, stored in W's dtype)
//
// so every element is round_W(round32(W + round32(round32(Σ_k B_ik·A_kj)·s))),
// where the inner sum's rounding errors depend on the summation order of
// torch's CPU or CUDA matmul, which is not specified. qconv computes instead
//
//	delta_ij = round32(s · Σ_k B_ik·A_kj)          exactly rounded (one rounding)
//	out_ij   = round_out(W_ij + delta_ij)           exactly rounded (one rounding)
//
// with s = float32(scaling), the number torch multiplies by (scaling is a
// Python float, lora_alpha / r or lora_alpha / sqrt(r); torch converts a
// Python scalar to the tensor's dtype). PEFT's Embedding.merge differs
// from Linear's: it adds delta.to(W's dtype), a second rounding that qconv
// does not copy. Both roundings are to nearest,
// ties to even, and both are correct for every input: this is the merge
// PEFT would compute with exact arithmetic inside each of its two steps.
// It differs from PEFT's bytes only where PEFT's float32 matmul, or its
// rounding of the sum to float32 before rounding to bf16 (a double
// rounding), lands on the other side of a rounding boundary; the reference
// tests count those elements.
//
// How the delta is rounded correctly. A and B are float32, so each product
// B_ik·A_kj is exact in float64 (48 significant bits). Their sum S is
// computed in float64 in any order, with error at most (r-1)·u·Σ|B_ik·A_kj|
// (u = 2^-53, the standard bound for recursive summation), and D = fl(s·S)
// adds at most u·|s·S|. With M_i = max_k |B_ik| and C_j = Σ_k |A_kj|
// (precomputed per row and column), Σ_k |B_ik·A_kj| ≤ M_i·C_j, so
//
//	|D - s·S_exact| ≤ E = 2·(r+1)·u·|s|·M_i·C_j + 2^-1070
//
// (a factor 2 of margin covers the rounding of D±E itself and the
// higher-order terms). Rounding to nearest is monotonic, so if
// float32(D-E) == float32(D+E), that float32 is the correctly rounded
// delta. Otherwise (5,791 of 1.07·10^9 elements when a rank-16 adapter
// is merged into the 2 GB benchmark model) the delta is computed exactly
// with math/big (exactRound32).
//
// How the sum is rounded correctly. W and delta are exact in float64;
// their sum is x + e exactly, with x = fl(W + delta) and e from TwoSum.
// Rounding x to the output format gives the correctly rounded x + e except
// when x lies exactly halfway between two neighbours of the output format
// and e != 0, in which case the sign of e decides (roundTo).

// unit is u = 2^-53, the unit roundoff of float64.
const unit = 1.0 / (1 << 53)

// twoSum returns x = fl(a+b) and e with a+b = x+e exactly (Knuth).
func twoSum(a, b float64) (x, e float64) {
	x = a + b
	bv := x - a
	av := x - bv
	e = (a - av) + (b - bv)
	return x, e
}

// format describes a binary floating-point output format: p significant
// bits, normal exponents emin to emax (values m·2^e with 1 <= m < 2).
type format struct {
	p, emin, emax int
}

var (
	fmtF32  = format{24, -126, 127}
	fmtBF16 = format{8, -126, 127}
	fmtF16  = format{11, -14, 15}
)

func formatOf(d dtype.DType) format {
	switch d {
	case dtype.BF16:
		return fmtBF16
	case dtype.F16:
		return fmtF16
	}
	return fmtF32
}

// roundTo rounds x + e (x = fl(x+e), e its error, see twoSum) to the
// nearest value of format f, ties to even, and returns it as a float64
// (±Inf on overflow). Only a tie of x itself needs e: x+e is then on the
// side of the tie that e's sign says.
func roundTo(x, e float64, f format) float64 {
	// The common case, x in f's normal range: round the float64's
	// significand to f.p bits in place (a carry into the exponent is
	// right, and one beyond emax is the overflow checked below).
	bits := math.Float64bits(x)
	if exp := int(bits>>52&0x7ff) - 1023; exp >= f.emin && exp <= f.emax {
		shift := uint(52 - (f.p - 1))
		mask := uint64(1)<<shift - 1
		half := uint64(1) << (shift - 1)
		rem, base := bits&mask, bits&^mask
		up := rem > half
		if rem == half {
			if e != 0 {
				up = (e > 0) == (x > 0) // a tie of x, broken by e
			} else {
				up = base>>shift&1 == 1 // ties to even
			}
		}
		if up {
			base += 1 << shift
		}
		r := math.Float64frombits(base)
		if math.Abs(r) >= math.Ldexp(1, f.emax+1) {
			return math.Inf(int(math.Copysign(1, x)))
		}
		return r
	}
	return roundSlow(x, e, f)
}

// bf16Bits is roundTo(x, e, fmtBF16) as bfloat16 bits, for x whose
// rounding stays in bf16's normal range; ok is false otherwise (then use
// roundTo).
func bf16Bits(x, e float64) (b uint16, ok bool) {
	bits := math.Float64bits(x)
	exp := int(bits>>52&0x7ff) - 1023
	if exp < -126 || exp > 126 {
		return 0, false
	}
	const shift = 52 - 7
	rem := bits & (1<<shift - 1)
	base := bits >> shift // sign, exponent, 7 fraction bits
	up := rem > 1<<(shift-1)
	if rem == 1<<(shift-1) {
		if e != 0 {
			up = (e > 0) == (x > 0)
		} else {
			up = base&1 == 1
		}
	}
	if up {
		base++ // a carry into the exponent is right (exp <= 126: no overflow)
	}
	sign := uint16(base>>(63-shift)) << 15
	e64 := int(base>>7&0x7ff) - 1023 + 127
	return sign | uint16(e64)<<7 | uint16(base&0x7f), true
}

// roundSlow is roundTo for x outside f's normal range: zero, ±Inf, NaN,
// and values that round to f's subnormals (or to zero).
func roundSlow(x, e float64, f format) float64 {
	if x == 0 || math.IsInf(x, 0) || math.IsNaN(x) {
		return x
	}
	_, exp := math.Frexp(x) // |x| = frac·2^exp, 0.5 <= frac < 1
	q := max(exp-1, f.emin) - (f.p - 1)
	// y = x / 2^q is exact (a power-of-two scaling of a normal float64
	// far from its limits); its integer part is the significand.
	y := math.Ldexp(x, -q)
	n := math.RoundToEven(y)
	if d := math.Abs(y - math.Trunc(y)); d == 0.5 && e != 0 {
		// A tie of x, broken by e.
		if (e > 0) == (y > 0) {
			n = math.Trunc(y) + math.Copysign(1, y)
		} else {
			n = math.Trunc(y)
		}
	}
	r := math.Ldexp(n, q)
	if r == 0 {
		return math.Copysign(0, x)
	}
	if math.Abs(r) >= math.Ldexp(1, f.emax+1) {
		return math.Inf(int(math.Copysign(1, x)))
	}
	return r
}

// encode stores v, a value of d's format (or ±Inf, ±0), in b.
func encode(b []byte, v float64, d dtype.DType) {
	switch d {
	case dtype.BF16:
		u := math.Float32bits(float32(v)) >> 16
		b[0], b[1] = byte(u), byte(u>>8)
	case dtype.F16:
		u := dtype.F32ToF16(float32(v))
		b[0], b[1] = byte(u), byte(u>>8)
	default:
		u := math.Float32bits(float32(v))
		b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
}

// addRounded returns round_d(w + delta), correctly rounded.
func addRounded(w float64, delta float32, f format) float64 {
	x, e := twoSum(w, float64(delta))
	return roundTo(x, e, f)
}

// exactRound32 returns round32(s · Σ_k l[k]·r[k]) computed exactly: each
// product of two float32 values is exact in float64 and their sum and the
// product with s are exact in a big.Float of enough precision (the
// exponents of float32 products span under 600 bits).
func exactRound32(s float64, l, r []float64) float32 {
	const prec = 1200
	var sum, t big.Float
	sum.SetPrec(prec)
	t.SetPrec(prec)
	for k := range l {
		t.SetFloat64(l[k] * r[k]) // exact: a product of two float32
		sum.Add(&sum, &t)
	}
	t.SetFloat64(s)
	sum.Mul(&sum, &t) // exact too: under 600 + 24 bits
	f, _ := sum.Float32()
	if f == 0 && sum.Sign() != 0 {
		// big.Float flushes |x| < 2^-149 to zero; round to nearest
		// instead: 2^-149 when |x| > 2^-150.
		var half big.Float
		half.SetFloat64(math.Ldexp(1, -150))
		var a big.Float
		a.Abs(&sum)
		if a.Cmp(&half) > 0 {
			f = float32(math.Copysign(math.Ldexp(1, -149), float64(sum.Sign())))
		}
	}
	return f
}
