package dequant_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/convert/dequant"
	"github.com/qconv/qconv/convert/verify"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/synth"
)

// benchModel converts a synthetic bf16 Llama (2 layers, hidden 2048,
// intermediate 5632: 62 M weights) to NF4 with double quantization.
func benchModel(b *testing.B) (src, quant string, weightBytes int64) {
	b.Helper()
	dir := b.TempDir()
	src = filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o777); err != nil {
		b.Fatal(err)
	}
	ts := synth.Llama(2, 2048, 512, 5632, 32000, dtype.BF16)
	if err := synth.WriteFile(filepath.Join(src, "model.safetensors"), ts, 1); err != nil {
		b.Fatal(err)
	}
	if err := synth.WriteConfig(src, "bfloat16"); err != nil {
		b.Fatal(err)
	}
	quant = filepath.Join(dir, "nf4")
	sum, err := convert.Convert(context.Background(), src, quant, convert.Options{})
	if err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(src, "model.safetensors"))
	if err != nil {
		b.Fatal(err)
	}
	_ = sum
	return src, quant, fi.Size()
}

// BenchmarkDequantize measures the whole pipeline; bytes are output bytes.
func BenchmarkDequantize(b *testing.B) {
	_, quant, size := benchModel(b)
	b.SetBytes(size)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		dst := filepath.Join(b.TempDir(), "out")
		if _, err := dequant.Dequantize(context.Background(), quant, dst, dequant.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify measures verify; bytes are the original's bytes.
func BenchmarkVerify(b *testing.B) {
	src, quant, size := benchModel(b)
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		rep, err := verify.Compare(context.Background(), src, quant, verify.Options{})
		if err != nil || !rep.OK() {
			b.Fatal(err)
		}
	}
}
