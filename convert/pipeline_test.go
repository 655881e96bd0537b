package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/synth"
)

// testJobElems is a small job size so that tests cross job boundaries.
const testJobElems = 2 * 256 * 64 // two nested blocks at blocksize 64

// boundaryTensors returns tensors whose sizes sit on and around the job
// and block boundaries of testJobElems, an empty tensor, odd counts,
// mixed source dtypes, and a multi-job tensor last.
func boundaryTensors() []synth.Tensor {
	J := int64(testJobElems)
	return []synth.Tensor{
		{Name: "model.embed_tokens.weight", DType: dtype.BF16, Shape: []int64{64, 130}},
		{Name: "model.layers.0.a.weight", DType: dtype.BF16, Shape: []int64{1, J - 1}},
		{Name: "model.layers.0.b.weight", DType: dtype.BF16, Shape: []int64{1, J}},
		{Name: "model.layers.0.c.weight", DType: dtype.F32, Shape: []int64{1, J + 1}},
		{Name: "model.layers.0.d.weight", DType: dtype.F16, Shape: []int64{3, 5}},
		{Name: "model.layers.0.e.weight", DType: dtype.BF16, Shape: []int64{0, 8}},
		{Name: "model.layers.0.e.bias", DType: dtype.F32, Shape: []int64{J + 1}},
		{Name: "model.layers.0.f.weight", DType: dtype.BF16, Shape: []int64{7, 9}},
		{Name: "model.layers.0.norm.weight", DType: dtype.F32, Shape: []int64{J - 1}},
		{Name: "model.layers.0.empty", DType: dtype.F32, Shape: []int64{0}},
		{Name: "model.layers.0.ids", DType: dtype.I64, Shape: []int64{5}},
		{Name: "model.layers.1.g.weight", DType: dtype.F32, Shape: []int64{96, 1025}},
		{Name: "lm_head.weight", DType: dtype.BF16, Shape: []int64{64, 130}},
		{Name: "model.layers.1.z.weight", DType: dtype.BF16, Shape: []int64{5, 3*J + 17}},
	}
}

func writeSynth(t testing.TB, tensors []synth.Tensor, maxShard int64, cfgDType string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	if err := synth.WriteSharded(dir, tensors, maxShard, 7); err != nil {
		t.Fatal(err)
	}
	if err := synth.WriteConfig(dir, cfgDType); err != nil {
		t.Fatal(err)
	}
	// The tensors have invented names: an architecture that formats/arch
	// does not know, so that qconv's name rules decide.
	cfgPath := filepath.Join(dir, "config.json")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.ReplaceAll(bytes.ReplaceAll(cfg, []byte(`"LlamaForCausalLM"`), []byte(`"QconvTestForCausalLM"`)), []byte(`"llama"`), []byte(`"qconv_test"`))
	if err := os.WriteFile(cfgPath, cfg, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(`{"x": 1}`), 0o666); err != nil {
		t.Fatal(err)
	}
	return dir
}

func convertTo(t testing.TB, src string, opts Options) (string, *Summary) {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "out")
	sum, err := Convert(context.Background(), src, dst, opts)
	if err != nil {
		t.Fatal(err)
	}
	return dst, sum
}

// readDir returns every file of dir by name (not those in
// subdirectories).
func readDir(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func TestWorkersEquivalence(t *testing.T) {
	optsList := []Options{
		{DType: dtype.BF16},
		{QuantType: bnb.FP4, NoDoubleQuant: true},
		{Blocksize: 32, DType: dtype.F16},
		{Blocksize: 4096, DType: dtype.F32},
		{MaxShardSize: 40_000, DType: dtype.BF16},
	}
	for _, shard := range []int64{1 << 40, 100_000} {
		src := writeSynth(t, boundaryTensors(), shard, "")
		for oi, o := range optsList {
			o.jobElements = testJobElems
			o.Workers = 1
			refDir, _ := convertTo(t, src, o)
			ref := readDir(t, refDir)
			for _, w := range []int{2, 3, 8} {
				t.Run(fmt.Sprintf("shard%d/opts%d/j%d", shard, oi, w), func(t *testing.T) {
					o.Workers = w
					dir, _ := convertTo(t, src, o)
					sameFiles(t, readDir(t, dir), ref, "the -j 1 output")
				})
			}
		}
	}
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// sameFiles checks that got and want (see readDir) hold the same files
// with the same bytes; want is described as what.
func sameFiles(t testing.TB, got, want map[string][]byte, what string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("files %v, want those of %s: %v", keys(got), what, keys(want))
	}
	for name, b := range want {
		if !bytes.Equal(got[name], b) {
			t.Errorf("%s differs from %s", name, what)
		}
	}
}

// outputTensors reads every tensor of a converted checkpoint.
func outputTensors(t testing.TB, dir string) map[string]struct {
	info  safetensors.TensorInfo
	bytes []byte
} {
	t.Helper()
	ck, err := checkpoint.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	out := map[string]struct {
		info  safetensors.TensorInfo
		bytes []byte
	}{}
	for _, ten := range ck.Tensors() {
		b, err := ten.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		out[ten.Name] = struct {
			info  safetensors.TensorInfo
			bytes []byte
		}{*ten.TensorInfo, b}
	}
	return out
}

// TestJobsMatchWholeTensor checks the job-split quantization of every
// quantized tensor against bnb's quantizer run over the whole tensor at
// once (bnb's kernels are checked against real bitsandbytes output).
func TestJobsMatchWholeTensor(t *testing.T) {
	tensors := boundaryTensors()
	src := writeSynth(t, tensors, 1<<40, "")
	// Small jobs (several per tensor), and default jobs, which read and
	// quantize several sub-chunks each (the last one odd-sized).
	for _, c := range []struct{ bs, jobElems int }{{64, testJobElems}, {4096, testJobElems}, {64, 0}, {4096, 0}} {
		bs := c.bs
		dir, sum := convertTo(t, src, Options{DType: dtype.BF16, Blocksize: bs, jobElements: c.jobElems, Workers: 3})
		out := outputTensors(t, dir)
		srcCk, err := checkpoint.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		nq := 0
		for _, it := range sum.Plan.items {
			if !it.quantize {
				if _, ok := out[it.src.Name+".absmax"]; ok {
					t.Errorf("%s: kept tensor has an absmax", it.src.Name)
				}
				continue
			}
			nq++
			st, _ := srcCk.Tensor(it.src.Name)
			raw, err := st.ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			vals := make([]float32, st.NumElements())
			cast.Decode(vals, raw, st.DType, dtype.BF16)
			packed := make([]byte, bnb.PackedBytes(int64(len(vals))))
			absmax := make([]float32, bnb.NumBlocks(int64(len(vals)), bs))
			bnb.QuantizeBlocks(packed, absmax, vals, bs, bnb.NF4)
			codes, nested, offset := bnb.DoubleQuant(absmax)
			if !bytes.Equal(out[it.src.Name].bytes, packed) {
				t.Errorf("%s: packed weight differs from a whole-tensor quantization", it.src.Name)
			}
			if !bytes.Equal(out[it.src.Name+".absmax"].bytes, codes) {
				t.Errorf("%s: absmax codes differ", it.src.Name)
			}
			if !bytes.Equal(out[it.src.Name+".nested_absmax"].bytes, cast.F32Bytes(nested)) {
				t.Errorf("%s: nested absmax differs", it.src.Name)
			}
			qs := bnb.QuantState{QuantType: bnb.NF4, Blocksize: bs, DType: "bfloat16", Shape: st.Shape,
				DoubleQuant: true, NestedBlocksize: 256, NestedDType: "float32", NestedOffset: offset}
			if got := out[it.src.Name+".quant_state.bitsandbytes__nf4"].bytes; !bytes.Equal(got, qs.MarshalPython()) {
				t.Errorf("%s: quant state %s, want %s", it.src.Name, got, qs.MarshalPython())
			}
		}
		srcCk.Close()
		if nq != 7 {
			t.Errorf("quantized %d tensors, want 7 (a, b, c, d, f, g, z)", nq)
		}
	}
}

// TestShardedOutput splits the golden NF4 output into shards: every tensor
// must be the golden one, the index must list them all with transformers'
// totals (total_parameters as the golden fp32 index counts them).
func TestShardedOutput(t *testing.T) {
	want := outputTensors(t, filepath.Join(goldenModels, "tiny-llama-bf16-nf4-dq-u8"))
	for _, size := range []string{"40KB", "100KB", "200KB"} {
		t.Run(size, func(t *testing.T) {
			max, err := ParseSize(size)
			if err != nil {
				t.Fatal(err)
			}
			dir, sum := convertTo(t, filepath.Join(goldenModels, "tiny-llama-bf16"), Options{MaxShardSize: max, Workers: 2})
			if len(sum.Files) < 2 {
				t.Fatalf("got %d files, want a sharded output", len(sum.Files))
			}
			for i, f := range sum.Files {
				if wantName := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(sum.Files)); f != wantName {
					t.Errorf("file %d is %s, want %s", i, f, wantName)
				}
				fi, err := os.Stat(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				sf, err := safetensors.Open(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				var data int64
				for _, ten := range sf.Tensors() {
					data += ten.Size()
				}
				if data > max+maxPyFloatLen && len(sf.Tensors()) > 1 {
					t.Errorf("%s: %d data bytes in %d tensors, over the %d limit", f, data, len(sf.Tensors()), max)
				}
				sf.Close()
				_ = fi
			}
			got := outputTensors(t, dir)
			if len(got) != len(want) {
				t.Errorf("got %d tensors, want %d", len(got), len(want))
			}
			for name, w := range want {
				g, ok := got[name]
				if !ok {
					t.Errorf("missing %s", name)
					continue
				}
				if g.info.DType != w.info.DType || !slices.Equal(g.info.Shape, w.info.Shape) || !bytes.Equal(g.bytes, w.bytes) {
					t.Errorf("%s differs from the golden single-file output", name)
				}
			}
			ixb, err := os.ReadFile(filepath.Join(dir, checkpoint.IndexFileName))
			if err != nil {
				t.Fatal(err)
			}
			ix, err := checkpoint.ParseIndex(ixb)
			if err != nil {
				t.Fatal(err)
			}
			// The golden fp32 index was written by transformers for the same
			// model: a 4-bit weight of n elements counts n parameters.
			gix, err := os.ReadFile(filepath.Join(goldenModels, "tiny-llama-f32", checkpoint.IndexFileName))
			if err != nil {
				t.Fatal(err)
			}
			g, err := checkpoint.ParseIndex(gix)
			if err != nil {
				t.Fatal(err)
			}
			if ix.TotalParameters != g.TotalParameters {
				t.Errorf("total_parameters %d, want %d", ix.TotalParameters, g.TotalParameters)
			}
			var total int64
			for _, w := range want {
				total += w.info.Size()
			}
			if ix.TotalSize != total {
				t.Errorf("total_size %d, want %d", ix.TotalSize, total)
			}
			if !bytes.HasSuffix(ixb, []byte("}\n")) {
				t.Errorf("index does not end in a newline")
			}
		})
	}
}

// failAfter is an io.ReaderAt/io.WriterAt wrapper that fails once more
// than limit bytes have gone through it.
type failAfter struct {
	r     io.ReaderAt
	w     io.WriterAt
	limit int64
	n     *atomic.Int64
}

var errInjected = errors.New("injected failure")

func (f failAfter) ReadAt(b []byte, off int64) (int, error) {
	if f.n.Add(int64(len(b))) > f.limit {
		return 0, errInjected
	}
	return f.r.ReadAt(b, off)
}

func (f failAfter) WriteAt(b []byte, off int64) (int, error) {
	if f.n.Add(int64(len(b))) > f.limit {
		return 0, errInjected
	}
	return f.w.WriteAt(b, off)
}

// noOutput checks that a failed conversion left neither dst nor a
// temporary directory beside it.
func noOutput(t *testing.T, dst string) {
	t.Helper()
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after a failed conversion", dst)
	}
	ents, _ := os.ReadDir(filepath.Dir(dst))
	for _, e := range ents {
		if strings.Contains(e.Name(), ".qconv-") {
			t.Errorf("temporary %s left behind", e.Name())
		}
	}
}

func TestFailures(t *testing.T) {
	tensors := boundaryTensors()
	src := writeSynth(t, tensors, 1<<40, "bfloat16")
	type tc struct {
		name    string
		opts    Options
		wantErr []string
	}
	var reads, writes atomic.Int64
	cases := []tc{
		{"reader fails mid-tensor", Options{hooks: &hooks{reader: func(name string, r io.ReaderAt) io.ReaderAt {
			if name != "model.layers.1.z.weight" {
				return r
			}
			return failAfter{r: r, limit: testJobElems * 2 * 2, n: &reads}
		}}}, []string{"model.safetensors", `"model.layers.1.z.weight"`, "injected failure"}},
		{"writer fails mid-file", Options{hooks: &hooks{writer: func(name string, w io.WriterAt) io.WriterAt {
			return failAfter{w: w, limit: 300_000, n: &writes}
		}}}, []string{"model.safetensors", "writing tensor", "injected failure"}},
	}
	for _, c := range cases {
		for _, w := range []int{1, 3} {
			t.Run(fmt.Sprintf("%s/j%d", c.name, w), func(t *testing.T) {
				reads.Store(0)
				writes.Store(0)
				dst := filepath.Join(t.TempDir(), "out")
				o := c.opts
				o.Workers = w
				o.jobElements = testJobElems
				_, err := Convert(context.Background(), src, dst, o)
				if err == nil {
					t.Fatal("no error")
				}
				for _, s := range c.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not mention %q", err, s)
					}
				}
				noOutput(t, dst)
			})
		}
	}
}

func TestNonFinite(t *testing.T) {
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(-1)), 1e30} {
		// 40000: in the second small job; 300000: in the third sub-chunk
		// of a default-sized job.
		for _, at := range []int64{40000, 300000} {
			tensors := boundaryTensors()
			tensors[len(tensors)-1].Patch = func(start int64, v []float32) {
				if i := at - start; i >= 0 && i < int64(len(v)) {
					v[i] = bad
				}
			}
			tensors[len(tensors)-1].DType = dtype.F32
			src := writeSynth(t, tensors, 1<<40, "")
			dt := dtype.F32
			want := fmt.Sprintf("element %d is %v after rounding to F32", at, bad)
			if bad == 1e30 { // finite in f32, Inf in f16
				dt = dtype.F16
				want = fmt.Sprintf("element %d is +Inf after rounding to F16", at)
			}
			// Without double quantization only the quantization pass
			// sees the values.
			for _, o0 := range []Options{{Workers: 1}, {Workers: 2}, {Workers: 2, NoDoubleQuant: true}} {
				for _, je := range []int{testJobElems, 0} {
					o := o0
					o.DType, o.jobElements = dt, je
					dst := filepath.Join(t.TempDir(), "out")
					_, err := Convert(context.Background(), src, dst, o)
					if err == nil || !strings.Contains(err.Error(), `"model.layers.1.z.weight"`) || !strings.Contains(err.Error(), want) {
						t.Errorf("%v at %d, %+v: error %v, want one naming the tensor and saying %q", bad, at, o, err, want)
					}
					noOutput(t, dst)
					o.AllowNonFinite = true
					if _, err := Convert(context.Background(), src, dst, o); err != nil {
						t.Errorf("--allow-nonfinite: %v", err)
					}
				}
			}
		}
	}
}

func TestBadInputs(t *testing.T) {
	tensors := boundaryTensors()
	sharded := writeSynth(t, tensors, 100_000, "")
	truncated := writeSynth(t, tensors, 100_000, "")
	shard := filepath.Join(truncated, "model-00002-of-00007.safetensors")
	fi, err := os.Stat(shard)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(shard, fi.Size()-10); err != nil {
		t.Fatal(err)
	}
	missing := writeSynth(t, tensors, 100_000, "")
	if err := os.Remove(filepath.Join(missing, "model-00003-of-00007.safetensors")); err != nil {
		t.Fatal(err)
	}
	f64 := writeSynth(t, []synth.Tensor{{Name: "x.weight", DType: dtype.F64, Shape: []int64{4, 4}}}, 1<<40, "")
	nonEmpty := filepath.Join(t.TempDir(), "full")
	os.MkdirAll(nonEmpty, 0o777)
	os.WriteFile(filepath.Join(nonEmpty, "keep.txt"), []byte("x"), 0o666)

	cases := []struct {
		name, src, dst string
		want           string
	}{
		{"truncated shard", truncated, "", "model-00002-of-00007.safetensors"},
		{"missing shard", missing, "", "model-00003-of-00007.safetensors"},
		{"already quantized", filepath.Join(goldenModels, "tiny-llama-bf16-nf4-dq-u8"), "", "already quantized"},
		{"unsupported dtype", f64, "", "unsupported dtype"},
		{"dst inside src", sharded, filepath.Join(sharded, "out"), "inside the source"},
		{"dst is src", sharded, sharded, "inside the source"},
		{"non-empty dst", sharded, nonEmpty, "not empty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dst := c.dst
			if dst == "" {
				dst = filepath.Join(t.TempDir(), "out")
			}
			before := readDir(t, c.src)
			_, err := Convert(context.Background(), c.src, dst, Options{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
			if c.dst == "" {
				noOutput(t, dst)
			}
			if c.name == "non-empty dst" {
				if got := readDir(t, nonEmpty); len(got) != 1 {
					t.Errorf("non-empty dst changed: %v", keys(got))
				}
			}
			sameFiles(t, readDir(t, c.src), before, "the source before")
		})
	}
}

func TestCancel(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 1<<40, "")
	for _, w := range []int{1, 3} {
		ctx, cancel := context.WithCancel(context.Background())
		dst := filepath.Join(t.TempDir(), "out")
		var calls atomic.Int64
		_, err := Convert(ctx, src, dst, Options{Workers: w, jobElements: testJobElems, Progress: func(done, total int64) {
			if calls.Add(1) == 3 {
				cancel()
			}
		}})
		cancel()
		if err == nil || !strings.Contains(err.Error(), "interrupted") {
			t.Errorf("-j %d: error %v, want interrupted", w, err)
		}
		noOutput(t, dst)
	}
}

func TestForce(t *testing.T) {
	src := filepath.Join(goldenModels, "tiny-llama-bf16")
	dst := filepath.Join(t.TempDir(), "out")
	os.MkdirAll(dst, 0o777)
	for _, name := range []string{"keep.txt", "model-00001-of-00002.safetensors", "model.safetensors.index.json"} {
		os.WriteFile(filepath.Join(dst, name), []byte("old"), 0o666)
	}
	if _, err := Convert(context.Background(), src, dst, Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	want := readDir(t, filepath.Join(goldenModels, "tiny-llama-bf16-nf4-dq-u8"))
	want["keep.txt"] = []byte("old")
	sameFiles(t, readDir(t, dst), want, "the golden output and keep.txt")
}

func TestCopiesAuxFiles(t *testing.T) {
	src := writeSynth(t, boundaryTensors()[:3], 1<<40, "bfloat16")
	os.WriteFile(filepath.Join(src, "pytorch_model.bin"), []byte("pickle"), 0o666)
	os.MkdirAll(filepath.Join(src, ".cache"), 0o777)
	os.WriteFile(filepath.Join(src, ".cache", "x"), []byte("x"), 0o666)
	os.MkdirAll(filepath.Join(src, "sub"), 0o777)
	os.WriteFile(filepath.Join(src, "sub", "chat_template.jinja"), []byte("t"), 0o666)
	var log bytes.Buffer
	dst, sum := convertTo(t, src, Options{Log: &log})
	if b, err := os.ReadFile(filepath.Join(dst, "tokenizer.json")); err != nil || string(b) != `{"x": 1}` {
		t.Errorf("tokenizer.json not copied: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "sub", "chat_template.jinja")); err != nil {
		t.Errorf("sub/chat_template.jinja not copied: %v", err)
	}
	for _, name := range []string{"pytorch_model.bin", ".cache"} {
		if _, err := os.Stat(filepath.Join(dst, name)); err == nil {
			t.Errorf("%s copied", name)
		}
	}
	if len(sum.NotCopied) != 1 || !strings.Contains(log.String(), "pytorch_model.bin") {
		t.Errorf("not copied %v, log %q", sum.NotCopied, log.String())
	}
}
