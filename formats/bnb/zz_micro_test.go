package bnb

import (
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

func BenchmarkMicroEncodeBF16(b *testing.B) {
	raw := benchRaw(benchN, dtype.BF16)
	out := make([]byte, benchN/2)
	tab := tableFor(NF4)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		for off := 0; off < len(raw); off += 128 {
			encodeBF16(out[off/4:off/4+32], raw[off:off+128], 12.5, tab)
		}
	}
}

func BenchmarkMicroStatsBF16(b *testing.B) {
	raw := benchRaw(benchN, dtype.BF16)
	b.SetBytes(int64(len(raw)))
	var s uint32
	for b.Loop() {
		for off := 0; off < len(raw); off += 128 {
			m, _ := bf16Stats(raw[off : off+128])
			s += m
		}
	}
	_ = s
}

func BenchmarkMicroRoundBF16(b *testing.B) {
	raw := benchRaw(rawChunk, dtype.F32)
	h := make([]byte, 2*rawChunk)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		roundF32ToBF16(h, raw)
	}
}
