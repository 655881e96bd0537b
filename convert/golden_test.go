package convert

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

const goldenModels = "../testdata/golden/models"

// goldenCase is a conversion that transformers + bitsandbytes (CUDA) made,
// with the options that reproduce it.
type goldenCase struct {
	src, want string
	opts      Options
}

func goldenCases() []goldenCase {
	return []goldenCase{
		{"tiny-llama-bf16", "tiny-llama-bf16-nf4-dq-u8", Options{}},
		{"tiny-llama-bf16", "tiny-llama-bf16-nf4-u8", Options{NoDoubleQuant: true}},
		{"tiny-llama-bf16", "tiny-llama-bf16-fp4-dq-u8", Options{QuantType: bnb.FP4}},
		{"tiny-llama-f32", "tiny-llama-f32-nf4-dq-u8", Options{DType: dtype.BF16}},
		{"tiny-llama-f32", "tiny-llama-f32-fp4-dq-u8", Options{DType: dtype.BF16, QuantType: bnb.FP4}},
		{"tiny-llama-b-f32", "tiny-llama-b-f32-nf4-dq-u8", Options{DType: dtype.BF16}},
		{"tiny-llama-b-f32", "tiny-llama-b-f32-fp4-u8-f16", Options{QuantType: bnb.FP4, NoDoubleQuant: true, DType: dtype.F16, ComputeDType: dtype.F32}},
	}
}

func TestGoldenModels(t *testing.T) { convertGoldenModels(t) }

// convertGoldenModels converts every golden case with one and with three
// workers and compares the output with bitsandbytes'.
func convertGoldenModels(t *testing.T) {
	for _, c := range goldenCases() {
		for _, workers := range []int{1, 3} {
			t.Run(c.want+"/j"+string(rune('0'+workers)), func(t *testing.T) {
				dst := filepath.Join(t.TempDir(), "out")
				opts := c.opts
				opts.Workers = workers
				if _, err := Convert(context.Background(), filepath.Join(goldenModels, c.src), dst, opts); err != nil {
					t.Fatal(err)
				}
				compareDirs(t, dst, filepath.Join(goldenModels, c.want))
			})
		}
	}
}

// compareDirs checks that dir holds exactly the files of want, byte for
// byte; for a differing safetensors file it names the differing tensors.
func compareDirs(t *testing.T, dir, want string) {
	t.Helper()
	wantEnts, err := os.ReadDir(want)
	if err != nil {
		t.Fatal(err)
	}
	gotEnts, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var gotNames, wantNames []string
	for _, e := range gotEnts {
		gotNames = append(gotNames, e.Name())
	}
	for _, e := range wantEnts {
		wantNames = append(wantNames, e.Name())
	}
	if !slices.Equal(gotNames, wantNames) {
		t.Errorf("files: got %v, want %v", gotNames, wantNames)
	}
	for _, name := range wantNames {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
			continue
		}
		w, err := os.ReadFile(filepath.Join(want, name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, w) {
			continue
		}
		t.Errorf("%s differs from the golden file (%d vs %d bytes)", name, len(got), len(w))
		if filepath.Ext(name) == ".safetensors" {
			diffSafetensors(t, got, w)
		} else {
			t.Logf("got:\n%s\nwant:\n%s", got, w)
		}
	}
}

func diffSafetensors(t *testing.T, got, want []byte) {
	t.Helper()
	g, err := safetensors.NewReader(bytes.NewReader(got), int64(len(got)))
	if err != nil {
		t.Errorf("output is not valid safetensors: %v", err)
		return
	}
	w, err := safetensors.NewReader(bytes.NewReader(want), int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, wt := range w.Tensors() {
		gt, ok := g.Tensor(wt.Name)
		if !ok {
			t.Errorf("missing tensor %q", wt.Name)
			continue
		}
		if gt.DType != wt.DType || !slices.Equal(gt.Shape, wt.Shape) {
			t.Errorf("tensor %q: got %v %v, want %v %v", wt.Name, gt.DType, gt.Shape, wt.DType, wt.Shape)
			continue
		}
		gb, _ := g.ReadTensor(wt.Name)
		wb, _ := w.ReadTensor(wt.Name)
		if !bytes.Equal(gb, wb) {
			if n++; n <= 10 {
				t.Errorf("tensor %q: bytes differ", wt.Name)
				if len(wb) < 300 {
					t.Logf("got  %q\nwant %q", gb, wb)
				}
			}
		}
	}
	for _, gt := range g.Tensors() {
		if _, ok := w.Tensor(gt.Name); !ok {
			t.Errorf("unexpected tensor %q", gt.Name)
		}
	}
}
