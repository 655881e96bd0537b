package dequant

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

const models = "../../testdata/golden/models"

func model(name string) string { return filepath.Join(models, name) }

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// header returns the 8-byte prefix and JSON header of a safetensors file.
func header(t *testing.T, path string) []byte {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return readFile(t, path)[:f.DataOffset()]
}

func run(t *testing.T, src string, opts Options) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "out")
	if _, err := Dequantize(context.Background(), src, dst, opts); err != nil {
		t.Fatal(err)
	}
	return dst
}

// tensorBytes returns every tensor of a checkpoint by name.
func tensorBytes(t *testing.T, path string) map[string][]byte {
	t.Helper()
	ck, err := checkpoint.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	m := map[string][]byte{}
	for _, tn := range ck.Tensors() {
		b, err := tn.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		m[tn.Name] = b
	}
	return m
}

// TestLayoutLikeTransformers dequantizes the golden bf16 models and checks
// that the output is laid out exactly as transformers saved the bf16
// source: the same safetensors header bytes (tensor names, dtypes, shapes,
// order, offsets, metadata), the same config.json without
// quantization_config, and generation_config.json copied. Dense tensors
// must come through unchanged.
func TestLayoutLikeTransformers(t *testing.T) {
	src := model("tiny-llama-bf16")
	for _, q := range []string{"tiny-llama-bf16-nf4-dq-u8", "tiny-llama-bf16-nf4-u8", "tiny-llama-bf16-fp4-dq-u8", "tiny-llama-bf16-nf4-dq-f32storage", "tiny-llama-bf16-nf4-dq-bf16storage", "tiny-llama-f32-nf4-dq-u8"} {
		t.Run(q, func(t *testing.T) {
			out := run(t, model(q), Options{})
			ents, _ := os.ReadDir(out)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if want := []string{"config.json", "generation_config.json", "model.safetensors"}; !slices.Equal(names, want) {
				t.Errorf("output files %v, want %v", names, want)
			}
			if !bytes.Equal(header(t, filepath.Join(out, "model.safetensors")), header(t, filepath.Join(src, "model.safetensors"))) {
				t.Errorf("model.safetensors header differs from transformers' bf16 save")
			}
			for _, f := range []string{"config.json", "generation_config.json"} {
				if !bytes.Equal(readFile(t, filepath.Join(out, f)), readFile(t, filepath.Join(src, f))) {
					t.Errorf("%s differs from transformers' bf16 save", f)
				}
			}
			got, quant := tensorBytes(t, out), tensorBytes(t, model(q))
			for _, n := range []string{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"} {
				if !bytes.Equal(got[n], quant[n]) {
					t.Errorf("dense tensor %s changed", n)
				}
			}
		})
	}
}

// TestStorageDTypes: the packed bytes saved as F32 or BF16 (quant storage
// float32/bfloat16) are the same bytes as the uint8 twin's, so the
// dequantized checkpoints must be identical, file for file.
func TestStorageDTypes(t *testing.T) {
	for _, fam := range []string{"tiny-llama-bf16", "tiny-llama-b-f32"} {
		want := run(t, model(fam+"-nf4-dq-u8"), Options{})
		for _, st := range []string{"-nf4-dq-f32storage", "-nf4-dq-bf16storage"} {
			got := run(t, model(fam+st), Options{Workers: 3, JobElements: 333})
			for _, f := range []string{"model.safetensors", "config.json"} {
				if !bytes.Equal(readFile(t, filepath.Join(got, f)), readFile(t, filepath.Join(want, f))) {
					t.Errorf("%s%s: %s differs from the uint8 twin's", fam, st, f)
				}
			}
		}
	}
}

// TestWorkersAndJobs: the output does not depend on the parallelism or
// the job size.
func TestWorkersAndJobs(t *testing.T) {
	src := model("tiny-llama-b-f32-nf4-dq-u8")
	want := readFile(t, filepath.Join(run(t, src, Options{Workers: 1}), "model.safetensors"))
	for _, o := range []Options{{Workers: 4, JobElements: 333}, {Workers: 2, JobElements: 64*256 + 1}, {Workers: 8, JobElements: 1 << 30}} {
		got := readFile(t, filepath.Join(run(t, src, o), "model.safetensors"))
		if !bytes.Equal(got, want) {
			t.Errorf("options %+v: output differs from -j 1", o)
		}
	}
}

// TestDType checks --dtype: every float tensor in the asked dtype, the
// config recording it, and (for f32 from an f32 source whose dense values
// were kept in bf16) the layout of transformers' f32 save.
func TestDType(t *testing.T) {
	out := run(t, model("tiny-llama-b-f32-nf4-dq-u8"), Options{DType: dtype.F32})
	if !bytes.Equal(header(t, filepath.Join(out, "model.safetensors")), header(t, model("tiny-llama-b-f32/model.safetensors"))) {
		t.Errorf("--dtype f32: header differs from transformers' f32 save")
	}
	if !bytes.Equal(readFile(t, filepath.Join(out, "config.json")), readFile(t, model("tiny-llama-b-f32/config.json"))) {
		t.Errorf("--dtype f32: config.json differs from the f32 source's")
	}
	f16 := run(t, model("tiny-llama-bf16-nf4-dq-u8"), Options{DType: dtype.F16})
	ck, err := checkpoint.Open(f16)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	for _, tn := range ck.Tensors() {
		if tn.DType != dtype.F16 {
			t.Errorf("--dtype f16: %s is %v", tn.Name, tn.DType)
		}
	}
	if d, _ := ck.ConfigDType(); d != dtype.F16 {
		t.Errorf("--dtype f16: config dtype %v", d)
	}
	// The f16 weights are the float32 dequantized values rounded once to
	// f16 (not through bf16).
	f32 := tensorBytes(t, run(t, model("tiny-llama-bf16-nf4-dq-u8"), Options{DType: dtype.F32}))
	h := tensorBytes(t, f16)
	const w = "model.layers.0.mlp.up_proj.weight"
	vals := make([]float32, len(f32[w])/4)
	cast.Decode(vals, f32[w], dtype.F32, dtype.F32)
	want := make([]byte, 2*len(vals))
	cast.Encode(want, vals, dtype.F16)
	if !bytes.Equal(h[w], want) {
		t.Errorf("--dtype f16: %s is not the f32 values rounded to f16", w)
	}
}

// TestSharded splits the output into shards of at most 200 KB, as the
// f32 source was saved, and checks the index (totals as transformers
// wrote them) and that the tensors are those of the single-file output.
// Which tensor lands in which shard follows a guessed state-dict order
// (natural name order), not the model's module order, so it is not
// compared with transformers' shards.
func TestSharded(t *testing.T) {
	src := model("tiny-llama-f32-nf4-dq-u8")
	single := tensorBytes(t, run(t, src, Options{DType: dtype.F32}))
	dst := filepath.Join(t.TempDir(), "out")
	sum, err := Dequantize(context.Background(), src, dst, Options{DType: dtype.F32, MaxShardSize: 200_000})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Files) != 10 || sum.Index != checkpoint.IndexFileName {
		t.Errorf("files %v, index %q; want 10 shards like transformers' 200KB save", sum.Files, sum.Index)
	}
	sharded := tensorBytes(t, dst) // checkpoint.Open checks the index strictly
	if len(sharded) != len(single) {
		t.Fatalf("%d tensors, want %d", len(sharded), len(single))
	}
	for n, b := range single {
		if !bytes.Equal(sharded[n], b) {
			t.Errorf("%s differs between sharded and single-file output", n)
		}
	}
	ix, err := checkpoint.ParseIndex(readFile(t, filepath.Join(dst, checkpoint.IndexFileName)))
	if err != nil {
		t.Fatal(err)
	}
	srcIx, err := checkpoint.ParseIndex(readFile(t, model("tiny-llama-f32/"+checkpoint.IndexFileName)))
	if err != nil {
		t.Fatal(err)
	}
	if ix.TotalSize != srcIx.TotalSize || ix.TotalParameters != srcIx.TotalParameters {
		t.Errorf("index totals %d bytes, %d parameters; transformers wrote %d, %d", ix.TotalSize, ix.TotalParameters, srcIx.TotalSize, srcIx.TotalParameters)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	nonEmpty := filepath.Join(tmp, "full")
	os.Mkdir(nonEmpty, 0o777)
	os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o666)
	for _, c := range []struct {
		src, dst, want string
		opts           Options
	}{
		{model("tiny-llama-bf16"), filepath.Join(tmp, "a"), "no bitsandbytes 4-bit weights", Options{}},
		{model("tiny-llama-bf16-nf4-u8"), nonEmpty, "not empty", Options{}},
		{model("tiny-llama-bf16-nf4-u8"), filepath.Join(model("tiny-llama-bf16-nf4-u8"), "sub"), "overlaps", Options{}},
		{filepath.Join(tmp, "missing"), filepath.Join(tmp, "b"), "dequant: ", Options{}},
		{model("tiny-llama-bf16-nf4-u8"), filepath.Join(tmp, "c"), "dtype", Options{DType: dtype.I32}},
	} {
		_, err := Dequantize(ctx, c.src, c.dst, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "dequant: ") {
			t.Errorf("Dequantize(%s, %s): %v, want an error containing %q", c.src, c.dst, err, c.want)
		}
	}
}

// TestAtomic: a failure in the middle, or a cancellation, leaves no
// destination and no temporary directory.
func TestAtomic(t *testing.T) {
	for _, c := range []struct {
		name string
		ctx  func() context.Context
		opts Options
	}{
		{"failure", context.Background, Options{Workers: 2, JobElements: 1, failAfter: 5}},
		{"cancel", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, Options{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "out")
			_, err := Dequantize(c.ctx(), model("tiny-llama-bf16-nf4-dq-u8"), dst, c.opts)
			if err == nil {
				t.Fatal("no error")
			}
			if c.name == "cancel" && !errors.Is(err, context.Canceled) {
				t.Errorf("error %v does not wrap context.Canceled", err)
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 0 {
				t.Errorf("left behind: %v", ents)
			}
		})
	}
}

// TestForce: with Force, a non-empty destination gets the output files,
// loses the stale weight files of an earlier sharded output, and keeps
// its other files; the result is the fresh output plus those files.
func TestForce(t *testing.T) {
	src := model("tiny-llama-bf16-nf4-dq-u8")
	dst := filepath.Join(t.TempDir(), "out")
	os.MkdirAll(dst, 0o777)
	for _, name := range []string{"keep.txt", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "config.json"} {
		os.WriteFile(filepath.Join(dst, name), []byte("old"), 0o666)
	}
	if _, err := Dequantize(context.Background(), src, dst, Options{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("without Force: %v, want a non-empty destination error", err)
	}
	if _, err := Dequantize(context.Background(), src, dst, Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	fresh := run(t, src, Options{})
	want := map[string][]byte{"keep.txt": []byte("old")}
	ents, _ := os.ReadDir(fresh)
	for _, e := range ents {
		want[e.Name()] = readFile(t, filepath.Join(fresh, e.Name()))
	}
	ents, _ = os.ReadDir(dst)
	if len(ents) != len(want) {
		t.Errorf("%d files in the destination, want %d", len(ents), len(want))
	}
	for name, b := range want {
		if got, err := os.ReadFile(filepath.Join(dst, name)); err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s differs from the fresh output's (%v)", name, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 1 {
		t.Errorf("left beside the destination: %v", ents)
	}
}
