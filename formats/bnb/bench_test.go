package bnb

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

// benchWeights returns n normally distributed weights of a typical scale,
// rounded to bf16 values like a bf16 model's.
func benchWeights(n int) []float32 {
	rng := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * 0.02)
	}
	return x
}

const benchN = 1 << 22 // 4M elements, a 2048x2048 weight

// BenchmarkQuantizeBlocks reports throughput twice: counted as bf16 input
// (2 bytes per element, the usual checkpoint) and as float32 input.
func BenchmarkQuantizeBlocks(b *testing.B) {
	src := benchWeights(benchN)
	for _, q := range []QuantType{NF4, FP4} {
		for _, bs := range []int{64, 4096} {
			for _, unit := range []struct {
				name  string
				bytes int64
			}{{"bf16", 2}, {"f32", 4}} {
				b.Run(q.String()+"/bs"+strconv.Itoa(bs)+"/"+unit.name, func(b *testing.B) {
					dst := make([]byte, PackedBytes(benchN))
					absmax := make([]float32, NumBlocks(benchN, bs))
					QuantizeBlocks(dst, absmax, src, bs, q) // build the tables outside the timing
					b.SetBytes(benchN * unit.bytes)
					b.ReportAllocs()
					b.ResetTimer()
					for b.Loop() {
						QuantizeBlocks(dst, absmax, src, bs, q)
					}
				})
			}
		}
	}
}

// BenchmarkDoubleQuant counts 4 bytes per absmax value.
func BenchmarkDoubleQuant(b *testing.B) {
	absmax := make([]float32, NumBlocks(benchN, 64))
	QuantizeBlocks(make([]byte, PackedBytes(benchN)), absmax, benchWeights(benchN), 64, NF4)
	b.SetBytes(int64(4 * len(absmax)))
	b.ReportAllocs()
	for b.Loop() {
		DoubleQuant(absmax)
	}
}

// BenchmarkDequantizeBlocks counts 4 bytes of float32 output per element.
func BenchmarkDequantizeBlocks(b *testing.B) {
	for _, q := range []QuantType{NF4, FP4} {
		b.Run(q.String(), func(b *testing.B) {
			packed := make([]byte, PackedBytes(benchN))
			absmax := make([]float32, NumBlocks(benchN, 64))
			QuantizeBlocks(packed, absmax, benchWeights(benchN), 64, q)
			dst := make([]float32, benchN)
			b.SetBytes(4 * benchN)
			b.ReportAllocs()
			for b.Loop() {
				DequantizeBlocks(dst, packed, absmax, 64, q)
			}
		})
	}
}

// benchRaw returns benchWeights(n) encoded as little-endian elements of dt.
func benchRaw(n int, dt dtype.DType) []byte {
	x := benchWeights(n)
	raw := make([]byte, n*dt.Size())
	for i, f := range x {
		switch dt {
		case dtype.F32:
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
		case dtype.BF16:
			binary.LittleEndian.PutUint16(raw[2*i:], dtype.F32ToBF16(f))
		case dtype.F16:
			binary.LittleEndian.PutUint16(raw[2*i:], dtype.F32ToF16(f))
		}
	}
	return raw
}

// benchPairs are the (source, model) dtype pairs benchmarked.
var benchPairs = [][2]dtype.DType{
	{dtype.BF16, dtype.BF16}, {dtype.F32, dtype.BF16}, {dtype.F16, dtype.F16},
	{dtype.F32, dtype.F32}, {dtype.F32, dtype.F16}, {dtype.F16, dtype.BF16}, {dtype.BF16, dtype.F32},
}

// BenchmarkQuantizeRaw counts the bytes of raw input. The "portable"
// variants keep off the vector kernels.
func BenchmarkQuantizeRaw(b *testing.B) {
	for _, p := range benchPairs {
		raw := benchRaw(benchN, p[0])
		for _, q := range []QuantType{NF4, FP4} {
			for _, bs := range []int{64, 4096} {
				for _, simd := range []bool{true, false} {
					name := fmt.Sprintf("%v_%v/%v/bs%d", p[0], p[1], q, bs)
					if !simd {
						name += "/portable"
					}
					b.Run(name, func(b *testing.B) {
						dst := make([]byte, PackedBytes(benchN))
						absmax := make([]float32, NumBlocks(benchN, bs))
						if _, err := quantizeRaw(dst, absmax, raw, p[0], p[1], bs, q, simd); err != nil {
							b.Fatal(err)
						}
						b.SetBytes(int64(len(raw)))
						b.ReportAllocs()
						for b.Loop() {
							_, _ = quantizeRaw(dst, absmax, raw, p[0], p[1], bs, q, simd)
						}
					})
				}
			}
		}
	}
}

// BenchmarkEncode16 times the code selection of the BF16 fast path alone
// (blocksize 64, a fixed reciprocal), portable and vector.
func BenchmarkEncode16(b *testing.B) {
	raw := benchRaw(benchN, dtype.BF16)
	out := make([]byte, benchN/2)
	tab := tableFor(NF4)
	rs := make([]float32, benchN/64)
	for i := range rs {
		rs[i] = 12.5
	}
	b.Run("portable", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			for off := 0; off < len(raw); off += 128 {
				encodeBF16(out[off/4:off/4+32], raw[off:off+128], 12.5, tab)
			}
		}
	})
	if !haveAVX2 {
		return
	}
	for _, on := range []bool{false, true} {
		if on && !haveAVX512 {
			continue
		}
		name := "avx2"
		if on {
			name = "avx512"
		}
		b.Run(name, func(b *testing.B) {
			defer setAVX512(on)()
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				encodeBlocksSIMD(out, raw, rs, 64, false, NF4)
			}
		})
	}
}

// BenchmarkBlockAbsmaxRaw counts the bytes of raw input.
func BenchmarkBlockAbsmaxRaw(b *testing.B) {
	for _, p := range benchPairs {
		raw := benchRaw(benchN, p[0])
		b.Run(fmt.Sprintf("%v_%v/bs64", p[0], p[1]), func(b *testing.B) {
			absmax := make([]float32, NumBlocks(benchN, 64))
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				_, _ = BlockAbsmaxRaw(absmax, raw, p[0], p[1], 64)
			}
		})
	}
}

// BenchmarkQuantizeViaFloat32 is the path QuantizeRaw replaces (see
// quantizeViaFloat32). It counts the bytes of raw BF16 input.
func BenchmarkQuantizeViaFloat32(b *testing.B) {
	raw := benchRaw(benchN, dtype.BF16)
	vals := make([]float32, 64<<10)
	dst := make([]byte, PackedBytes(benchN))
	absmax := make([]float32, NumBlocks(benchN, 64))
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		quantizeViaFloat32(dst, absmax, raw, vals)
	}
}

// quantizeViaFloat32 is what convert did before QuantizeRaw: decode
// len(vals) BF16 elements at a time to float32, scan them for NaN/Inf, and
// run QuantizeBlocks (NF4, blocksize 64).
func quantizeViaFloat32(dst []byte, absmax []float32, raw []byte, vals []float32) {
	n := len(raw) / 2
	for off := 0; off < n; off += len(vals) {
		v := vals[:min(len(vals), n-off)]
		for i := range v {
			v[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(raw[2*(off+i):]))
		}
		if firstNonFinite(v) >= 0 {
			panic("non-finite")
		}
		QuantizeBlocks(dst[off/2:], absmax[off/64:], v, 64, NF4)
	}
}

// BenchmarkDecodeRcpTable times the decoding of the embedded reciprocal
// table, which the first quantization of a process waits for.
func BenchmarkDecodeRcpTable(b *testing.B) {
	for b.Loop() {
		if _, err := decodeRcpTable(rcpTableGz); err != nil {
			b.Fatal(err)
		}
	}
}
