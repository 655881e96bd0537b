package bnb

import (
	"math/rand/v2"
	"strconv"
	"testing"
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
