package convert

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/pyjson"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"5GB": 5_000_000_000, "50GB": 50_000_000_000, "200KB": 200_000, "1.5MB": 1_500_000,
		"5gb": 5_000_000_000, " 10 MB ": 10_000_000, "1TB": 1_000_000_000_000,
		"1KiB": 1024, "512MiB": 512 << 20, "2GiB": 2 << 30, "1TiB": 1 << 40,
		"123": 123, "123B": 123, "0.5KB": 500,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GB", "-5GB", "0", "5XB", "1e400GB", "NaNGB", "0.0001B", "abc"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseDType(t *testing.T) {
	good := map[string]dtype.DType{
		"auto": dtype.Invalid, "": dtype.Invalid, "bf16": dtype.BF16, "BF16": dtype.BF16,
		"bfloat16": dtype.BF16, "torch.float16": dtype.F16, "f16": dtype.F16, "fp16": dtype.F16,
		"f32": dtype.F32, "float32": dtype.F32, "F32": dtype.F32,
	}
	for in, want := range good {
		if got, err := ParseDType(in); err != nil || got != want {
			t.Errorf("ParseDType(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"int8", "float64", "fp8", "x"} {
		if _, err := ParseDType(in); err == nil {
			t.Errorf("ParseDType(%q): no error", in)
		}
	}
}

func TestSettings(t *testing.T) {
	s, err := (&Options{}).settings()
	if err != nil {
		t.Fatal(err)
	}
	if s.blocksize != 64 || !s.doubleQuant || s.quant.String() != "nf4" || s.maxShard != DefaultMaxShardSize || s.workers < 1 {
		t.Errorf("defaults: %+v", s)
	}
	for _, w := range []int{1, 2, 16, 64, 128, 1000} {
		s, err := (&Options{Workers: w}).settings()
		if err != nil {
			t.Fatal(err)
		}
		if s.jobElems*4*w > 64<<20 && s.jobElems > 1<<16 || s.quantJobElems()%(64*256) != 0 {
			t.Errorf("workers %d: job of %d elements", w, s.jobElems)
		}
	}
	bad := []Options{{Blocksize: 48}, {Blocksize: 8192}, {QuantType: 9}, {DType: dtype.I8}, {ComputeDType: dtype.F64},
		{Workers: -1}, {MaxShardSize: -1}, {Skip: []string{"a[b"}}, {Part: Part{Index: 2, Count: 2}}}
	for _, o := range bad {
		if _, err := o.settings(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

func TestSelection(t *testing.T) {
	cases := []struct {
		name  string
		dt    dtype.DType
		shape []int64
		want  bool
	}{
		{"model.layers.0.self_attn.q_proj.weight", dtype.BF16, []int64{8, 8}, true},
		{"model.layers.0.mlp.down_proj.weight", dtype.F32, []int64{8, 8}, true},
		{"model.layers.0.block_sparse_moe.gate.weight", dtype.F16, []int64{8, 8}, false}, // a router
		{"model.layers.0.block_sparse_moe.experts.3.w1.weight", dtype.BF16, []int64{8, 8}, false},
		{"model.layers.0.mlp.router.weight", dtype.BF16, []int64{8, 8}, false},
		{"model.layers.0.mlp.gate_proj.weight", dtype.BF16, []int64{8, 8}, true},
		{"transformer.h.0.attn.c_attn.weight", dtype.F16, []int64{8, 24}, true},
		{"model.layers.0.self_attn.q_proj.bias", dtype.BF16, []int64{8}, false},
		{"model.layers.0.input_layernorm.weight", dtype.BF16, []int64{8}, false},
		{"model.layers.0.input_layernorm.weight", dtype.BF16, []int64{8, 8}, false},
		{"transformer.ln_f.weight", dtype.BF16, []int64{8, 8}, false},
		{"model.embed_tokens.weight", dtype.BF16, []int64{8, 8}, false},
		{"transformer.wte.weight", dtype.BF16, []int64{8, 8}, false},
		{"transformer.wpe.weight", dtype.BF16, []int64{8, 8}, false},
		{"shared.weight", dtype.BF16, []int64{8, 8}, false},
		{"bert.embeddings.word_embeddings.weight", dtype.BF16, []int64{8, 8}, false},
		{"bert.embeddings.projection.weight", dtype.BF16, []int64{8, 8}, true},
		{"lm_head.weight", dtype.BF16, []int64{8, 8}, false},
		{"embed_out.weight", dtype.BF16, []int64{8, 8}, false},
		{"model.layers.0.conv.weight", dtype.BF16, []int64{8, 8, 3}, false},
		{"model.layers.0.x.weight", dtype.BF16, []int64{0, 8}, false},
		{"model.layers.0.mixer.A_log", dtype.F32, []int64{8, 8}, false},
	}
	for _, c := range cases {
		got, err := selector{}.quantize(c.name, c.dt, c.shape)
		if err != nil || got != c.want {
			t.Errorf("%s %v %v: quantize %v, %v; want %v", c.name, c.dt, c.shape, got, err, c.want)
		}
	}
	sel := selector{skip: []string{"model.layers.1.*", "*.o_proj"}, include: []string{"lm_head", "*.norm.weight", "model.layers.1.x.weight"}}
	more := []struct {
		name  string
		dt    dtype.DType
		shape []int64
		want  bool
	}{
		{"model.layers.0.self_attn.o_proj.weight", dtype.BF16, []int64{8, 8}, false},
		{"model.layers.0.self_attn.q_proj.weight", dtype.BF16, []int64{8, 8}, true},
		{"model.layers.1.self_attn.q_proj.weight", dtype.BF16, []int64{8, 8}, false},
		{"model.layers.1.x.weight", dtype.BF16, []int64{8, 8}, false}, // skip wins
		{"lm_head.weight", dtype.BF16, []int64{8, 8}, true},
		{"model.norm.weight", dtype.BF16, []int64{8}, true},
		{"model.norm.weight", dtype.I64, []int64{8}, false},
	}
	for _, c := range more {
		got, err := sel.quantize(c.name, c.dt, c.shape)
		if err != nil || got != c.want {
			t.Errorf("globs: %s: quantize %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	if _, err := (selector{include: []string{"*"}}).quantize("x.weight", dtype.F64, []int64{4}); err == nil {
		t.Error("--include of an F64 tensor: no error")
	}
	for _, dt := range []dtype.DType{dtype.F64, dtype.F8_E4M3, dtype.I8, dtype.U8, dtype.I32} {
		if _, err := (selector{}).quantize("model.layers.0.x.weight", dt, []int64{8, 8}); err == nil {
			t.Errorf("a Linear weight of dtype %v: no error", dt)
		}
		if q, err := (selector{skip: []string{"*"}}).quantize("model.layers.0.x.weight", dt, []int64{8, 8}); err != nil || q {
			t.Errorf("a skipped Linear weight of dtype %v: %v, %v", dt, q, err)
		}
	}
}

func TestConfigJSON(t *testing.T) {
	src := writeSynth(t, boundaryTensors()[:4], 1<<40, "")
	cfg := `{"torch_dtype": "float32", "model_type": "qconv_test", "zeta": 1e-06, "alpha": [1, 2.50]}`
	if err := os.WriteFile(filepath.Join(src, "config.json"), []byte(cfg), 0o666); err != nil {
		t.Fatal(err)
	}
	dir, sum := convertTo(t, src, Options{DType: dtype.BF16, Skip: []string{"model.layers.0.b"}})
	got, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := pyjson.Parse(got)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := v.Get("dtype").AsString(); d != "bfloat16" {
		t.Errorf("dtype %q", d)
	}
	if d, _ := v.Get("torch_dtype").AsString(); d != "bfloat16" {
		t.Errorf("torch_dtype %q", d)
	}
	skip := v.Get("quantization_config").Get("llm_int8_skip_modules")
	var mods []string
	for _, m := range skip.Items() {
		s, _ := m.AsString()
		mods = append(mods, s)
	}
	if !slices.Equal(mods, []string{"model.layers.0.b"}) {
		t.Errorf("llm_int8_skip_modules %s, want [model.layers.0.b]", skip.MarshalCompact())
	}
	if !bytes.Contains(got, []byte(`"zeta": 1e-06`)) || !bytes.Contains(got, []byte("2.50")) || !bytes.HasSuffix(got, []byte("}\n")) {
		t.Errorf("config.json:\n%s", got)
	}
	if sum.TensorsQuantized != 2 {
		t.Errorf("%d tensors quantized, want 2", sum.TensorsQuantized)
	}
	// The default selection writes null, even though lm_head is kept.
	dir, _ = convertTo(t, filepath.Join(goldenModels, "tiny-llama-bf16"), Options{})
	got, _ = os.ReadFile(filepath.Join(dir, "config.json"))
	if !strings.Contains(string(got), `"llm_int8_skip_modules": null`) {
		t.Errorf("default selection: %s", got)
	}
}

// A known architecture with a tensor its table does not know is refused
// (naming the tensor and the class) unless --skip or --include decides it;
// an --include of what the architecture keeps dense is refused.
func TestKnownArchUnknownTensor(t *testing.T) {
	src := writeSynth(t, boundaryTensors()[:3], 1<<40, "")
	os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}`), 0o666)
	conv := func(o Options) error {
		_, err := Convert(t.Context(), src, filepath.Join(t.TempDir(), "o"), o)
		return err
	}
	err := conv(Options{})
	if err == nil || !strings.Contains(err.Error(), "GPT2LMHeadModel") || !strings.Contains(err.Error(), "--skip or --include") {
		t.Fatalf("unknown tensor: error %v", err)
	}
	if err := conv(Options{Skip: []string{"*"}}); err != nil {
		t.Errorf("--skip '*': %v", err)
	}
	if err := conv(Options{Include: []string{"*"}}); err != nil {
		t.Errorf("--include '*': %v", err)
	}
	mix := filepath.Join(archRefs, "mixtral--MixtralForCausalLM", "src")
	for _, g := range []string{"*.experts.*", "*.gate", "model.norm", "model.embed_tokens"} {
		_, err := Convert(t.Context(), mix, filepath.Join(t.TempDir(), "o"), Options{Include: []string{g}})
		if err == nil || !strings.Contains(err.Error(), "keeps dense") {
			t.Errorf("--include %q on Mixtral: error %v", g, err)
		}
	}
	if _, err := Convert(t.Context(), mix, filepath.Join(t.TempDir(), "o"), Options{Include: []string{"lm_head"}}); err != nil {
		t.Errorf("--include lm_head on Mixtral: %v", err)
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"5GB", "200KB", "1.5MB", "512MiB", "123", "0", "-1GB", "1e400GB", " 7 tib ", "B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n < 1 {
			t.Errorf("ParseSize(%q) = %d without an error", s, n)
		}
	})
}

func FuzzParseDType(f *testing.F) {
	for _, s := range []string{"auto", "bf16", "torch.float16", "F32", "int8", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDType(s)
		if err == nil && d != dtype.Invalid && !modelDType(d) {
			t.Errorf("ParseDType(%q) = %v", s, d)
		}
	})
}

// quantize is decide's verdict alone, for the table tests above.
func (s selector) quantize(name string, dt dtype.DType, shape []int64) (bool, error) {
	c, _, err := s.decide(name, dt, shape)
	return c.quantize, err
}
