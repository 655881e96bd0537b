package convert

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/synth"
)

// BenchmarkConvert converts a synthetic Llama-like checkpoint end to end
// (plan, statistics pass, quantization, output files, config) and reports
// MB/s of input. The checkpoint has 2 layers of hidden size 1024 (about
// 90 MB in bf16).
func BenchmarkConvert(b *testing.B) {
	for _, src := range []dtype.DType{dtype.BF16, dtype.F32} {
		dir := filepath.Join(b.TempDir(), "src")
		if err := synth.WriteSharded(dir, synth.Llama(2, 1024, 256, 2816, 8192, src), 1<<40, 1); err != nil {
			b.Fatal(err)
		}
		var size int64
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			fi, _ := e.Info()
			size += fi.Size()
		}
		for _, c := range []struct {
			name string
			opts Options
		}{
			{"nf4-dq", Options{DType: dtype.BF16}},
			{"nf4", Options{DType: dtype.BF16, NoDoubleQuant: true}},
			{"fp4-dq", Options{DType: dtype.BF16, QuantType: bnb.FP4}},
		} {
			for _, w := range []int{1, runtime.NumCPU()} {
				b.Run(fmt.Sprintf("%v/%s/j%d", src, c.name, w), func(b *testing.B) {
					b.SetBytes(size)
					b.ReportAllocs()
					opts := c.opts
					opts.Workers = w
					for i := 0; b.Loop(); i++ {
						dst := filepath.Join(b.TempDir(), fmt.Sprint("out", i))
						if _, err := Convert(context.Background(), dir, dst, opts); err != nil {
							b.Fatal(err)
						}
						os.RemoveAll(dst)
					}
				})
			}
		}
	}
}
