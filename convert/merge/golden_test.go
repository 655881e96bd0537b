package merge

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/convert/dequant"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/pyjson"
)

// The reference data (testdata/peft, made by scripts/gen_peft_refs.py with
// peft 0.21.0, transformers 5.17.0 and torch 2.11 on CPU): tiny bases,
// random adapters and PEFT's merge_and_unload of them. The tests check
// every element of qconv's merge against the correctly rounded value,
// computed here independently of round.go with math/big from PEFT's
// formulas, and report how many elements equal PEFT's bytes.

const peftDir = "../../testdata/peft"

// A tensor is a tensor's dtype, shape and values.
type tensor struct {
	dtype dtype.DType
	shape []int64
	raw   []byte
}

func (t tensor) at(i int) float64 {
	switch t.dtype {
	case dtype.BF16:
		return float64(dtype.BF16ToF32(binary.LittleEndian.Uint16(t.raw[2*i:])))
	case dtype.F16:
		return float64(dtype.F16ToF32(binary.LittleEndian.Uint16(t.raw[2*i:])))
	case dtype.F32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(t.raw[4*i:])))
	}
	panic("dtype " + t.dtype.String())
}

func (t tensor) n() int { return len(t.raw) / t.dtype.Size() }

func loadTensors(t *testing.T, path string) map[string]tensor {
	t.Helper()
	ck, err := checkpoint.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	m := map[string]tensor{}
	for _, x := range ck.Tensors() {
		b, err := x.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		m[x.Name] = tensor{x.DType, x.Shape, b}
	}
	return m
}

// refConfig is what the reference needs of adapter_config.json, read here
// with its own code.
type refConfig struct {
	r, alpha       float64
	rslora, fanIn  bool
	rank, alphaPat []pyjson.Member
}

func readRefConfig(t *testing.T, dir string) refConfig {
	b, err := os.ReadFile(filepath.Join(dir, "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := pyjson.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	var c refConfig
	c.r, _ = v.Get("r").Float64()
	c.alpha, _ = v.Get("lora_alpha").Float64()
	c.rslora, _ = v.Get("use_rslora").AsBool()
	c.fanIn, _ = v.Get("fan_in_fan_out").AsBool()
	c.rank = v.Get("rank_pattern").Members()
	c.alphaPat = v.Get("alpha_pattern").Members()
	return c
}

// scaling is PEFT's float32(alpha / r) (or / sqrt(r)) with
// get_pattern_key's regular expression (.*\.)?(KEY)$.
func (c refConfig) scaling(module string) float64 {
	r, alpha := c.r, c.alpha
	for _, m := range c.rank {
		if regexp.MustCompile(`^(.*\.)?(` + m.Key + `)$`).MatchString(module) {
			r, _ = m.Value.Float64()
			break
		}
	}
	for _, m := range c.alphaPat {
		if regexp.MustCompile(`^(.*\.)?(` + m.Key + `)$`).MatchString(module) {
			alpha, _ = m.Value.Float64()
			break
		}
	}
	if c.rslora {
		return float64(float32(alpha / math.Sqrt(r)))
	}
	return float64(float32(alpha / r))
}

// roundBig rounds x to p significant bits, nearest even (normal range).
func roundBig(x *big.Float, p uint) float64 {
	var r big.Float
	r.SetPrec(p).SetMode(big.ToNearestEven).Set(x)
	v, _ := r.Float64()
	return v
}

func bigOf(v float64) *big.Float { return new(big.Float).SetPrec(3000).SetFloat64(v) }

func precOf(d dtype.DType) uint {
	switch d {
	case dtype.BF16:
		return 8
	case dtype.F16:
		return 11
	}
	return 24
}

// reference computes the correctly rounded merge of the base and adapter
// tensors: whole tensors replaced, then for each module
// out = round(W + round32(s · Σ_k B·A)) with PEFT's index conventions
// (Linear: delta[i][j] = Σ_k B[i][k]·A[k][j]; fan_in_fan_out: the weight
// is delta's transpose; embedding: delta[i][j] = Σ_k B[j][k]·A[k][i]),
// and biases b + round32(s · lora_B.bias).
func reference(t *testing.T, base, ad map[string]tensor, c refConfig) map[string][]float64 {
	out := map[string][]float64{}
	vals := func(x tensor) []float64 {
		v := make([]float64, x.n())
		for i := range v {
			v[i] = x.at(i)
		}
		return v
	}
	for name, x := range base {
		out[name] = vals(x)
	}
	const pre = "base_model.model."
	for name, x := range ad {
		if strings.Contains(name, "lora_") {
			continue
		}
		target := strings.Replace(strings.TrimPrefix(name, pre), ".base_layer.", ".", 1)
		v := vals(x)
		for i := range v {
			v[i] = roundBig(bigOf(v[i]), precOf(base[target].dtype))
		}
		out[target] = v
	}
	for name, A := range ad {
		var mod string
		emb := false
		switch {
		case strings.HasSuffix(name, ".lora_A.weight"):
			mod = strings.TrimSuffix(strings.TrimPrefix(name, pre), ".lora_A.weight")
		case strings.HasSuffix(name, ".lora_embedding_A"):
			mod, emb = strings.TrimSuffix(strings.TrimPrefix(name, pre), ".lora_embedding_A"), true
		default:
			continue
		}
		var B tensor
		if emb {
			B = ad[pre+mod+".lora_embedding_B"]
		} else {
			B = ad[pre+mod+".lora_B.weight"]
		}
		s := c.scaling(mod)
		W := base[mod+".weight"]
		w := out[mod+".weight"]
		r := int(A.shape[0])
		rows, cols := int(W.shape[0]), int(W.shape[1])
		for i := 0; i < rows; i++ {
			for j := 0; j < cols; j++ {
				sum := bigOf(0)
				for k := 0; k < r; k++ {
					var a, b float64
					switch {
					case emb: // delta[i][j] = Σ B[j][k]·A[k][i]
						b, a = B.at(j*r+k), A.at(k*rows+i)
					case c.fanIn: // W[i][j] = delta[j][i] = Σ B[j][k]·A[k][i]
						b, a = B.at(j*r+k), A.at(k*rows+i)
					default: // delta[i][j] = Σ B[i][k]·A[k][j]
						b, a = B.at(i*r+k), A.at(k*cols+j)
					}
					sum.Add(sum, new(big.Float).SetPrec(3000).Mul(bigOf(a), bigOf(b)))
				}
				sum.Mul(sum, bigOf(s))
				delta := roundBig(sum, 24)
				e := i*cols + j
				w[e] = roundBig(new(big.Float).SetPrec(3000).Add(bigOf(w[e]), bigOf(delta)), precOf(W.dtype))
			}
		}
		if bb, ok := ad[pre+mod+".lora_B.bias"]; ok {
			b := out[mod+".bias"]
			for j := range b {
				delta := roundBig(new(big.Float).SetPrec(3000).Mul(bigOf(bb.at(j)), bigOf(s)), 24)
				b[j] = roundBig(new(big.Float).SetPrec(3000).Add(bigOf(b[j]), bigOf(delta)), precOf(base[mod+".bias"].dtype))
			}
		}
	}
	return out
}

// compare checks got against the reference element by element and
// returns how many elements of each tensor equal PEFT's (peft may be
// nil).
func compare(t *testing.T, got map[string]tensor, ref map[string][]float64, peft map[string]tensor) (eq, total int, perTensor map[string][2]int) {
	t.Helper()
	perTensor = map[string][2]int{}
	names := make([]string, 0, len(ref))
	for n := range ref {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		g, ok := got[name]
		if !ok {
			t.Errorf("output has no %q", name)
			continue
		}
		want := ref[name]
		if g.n() != len(want) {
			t.Errorf("%s: %d elements, want %d", name, g.n(), len(want))
			continue
		}
		bad := 0
		for i, w := range want {
			if v := g.at(i); v != w && !(math.IsNaN(v) && math.IsNaN(w)) {
				if bad < 3 {
					t.Errorf("%s[%d] = %v, want the correctly rounded %v", name, i, v, w)
				}
				bad++
			}
		}
		if peft != nil {
			p := peft[name]
			sz := g.dtype.Size()
			e := 0
			for i := 0; i < g.n() && p.dtype == g.dtype; i++ {
				if string(g.raw[i*sz:(i+1)*sz]) == string(p.raw[i*sz:(i+1)*sz]) {
					e++
				}
			}
			perTensor[name] = [2]int{e, g.n()}
			eq += e
			total += g.n()
		}
	}
	return eq, total, perTensor
}

func mergeTo(t *testing.T, base, adapter string, opts Options) (string, *Summary) {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "out")
	if opts.Convert.Workers == 0 {
		opts.Convert.Workers = 3
	}
	sum, err := Merge(context.Background(), base, adapter, dst, opts)
	if err != nil {
		t.Fatal(err)
	}
	return dst, sum
}

// TestGoldenPEFT merges each reference base with its adapter, checks every
// element against the correctly rounded value and logs how many equal
// PEFT's bytes; the Linear weights must equal them but for a few
// elements, and the file layout and config.json must be PEFT's.
func TestGoldenPEFT(t *testing.T) {
	for _, fam := range []string{"llama", "gpt2"} {
		t.Run(fam, func(t *testing.T) {
			base, ad := filepath.Join(peftDir, fam+"-base"), filepath.Join(peftDir, fam+"-adapter")
			dst, sum := mergeTo(t, base, ad, Options{})
			if sum.Quantized || sum.Modules == 0 {
				t.Fatalf("summary %+v", sum)
			}
			got := loadTensors(t, dst)
			ref := reference(t, loadTensors(t, base), loadTensors(t, filepath.Join(ad, AdapterWeightsName)), readRefConfig(t, ad))
			peft := loadTensors(t, filepath.Join(peftDir, fam+"-merged"))
			eq, total, per := compare(t, got, ref, peft)
			var linEq, linTot int
			for name, c := range per {
				if c[0] != c[1] {
					t.Logf("%s: %d of %d elements equal PEFT's", name, c[0], c[1])
				}
				if !strings.Contains(name, "embed") && !strings.Contains(name, "wte") {
					linEq, linTot = linEq+c[0], linTot+c[1]
				}
			}
			t.Logf("%s: %d of %d elements equal PEFT's bytes (%.4f%%); outside embeddings %d of %d; exact fallbacks %d",
				fam, eq, total, 100*float64(eq)/float64(total), linEq, linTot, sum.ExactElements)
			if linTot-linEq > linTot/10000+2 {
				t.Errorf("%d Linear elements differ from PEFT's; want nearly none", linTot-linEq)
			}
			for _, f := range []string{"config.json", "model.safetensors"} {
				a, _ := os.ReadFile(filepath.Join(dst, f))
				b, _ := os.ReadFile(filepath.Join(peftDir, fam+"-merged", f))
				if f == "model.safetensors" {
					n := 8 + int(binary.LittleEndian.Uint64(a))
					a, b = a[:n], b[:min(n, len(b))]
				}
				if string(a) != string(b) {
					t.Errorf("%s differs from PEFT's (header only, for the weights)", f)
				}
			}
		})
	}
}

// TestQwen2 uses the qwen2 reference adapter (use_rslora, rank_pattern,
// lora_bias=True, bias="all"), which PEFT itself refuses to merge: it has
// lora_B biases for layers without a bias. qconv refuses it too, naming
// the module; with those biases removed (a copy the test writes) the merge
// is checked against the reference (no PEFT bytes exist for it).
func TestQwen2(t *testing.T) {
	base, ad := filepath.Join(peftDir, "qwen2-base"), filepath.Join(peftDir, "qwen2-adapter")
	_, err := Merge(context.Background(), base, ad, filepath.Join(t.TempDir(), "out"), Options{})
	if err == nil || !strings.Contains(err.Error(), `"model.layers.0.mlp.down_proj" has "base_model.model.model.layers.0.mlp.down_proj.lora_B.bias" (lora_bias=True)`) {
		t.Fatalf("merge of an adapter with lora_B.bias on bias-less layers: %v", err)
	}
	baseT := loadTensors(t, base)
	adT := loadTensors(t, filepath.Join(ad, AdapterWeightsName))
	for name := range adT {
		if mod, ok := strings.CutSuffix(strings.TrimPrefix(name, "base_model.model."), ".lora_B.bias"); ok {
			if _, has := baseT[mod+".bias"]; !has {
				delete(adT, name)
			}
		}
	}
	fixed := filepath.Join(t.TempDir(), "adapter")
	writeAdapter(t, fixed, filepath.Join(ad, AdapterConfigName), adT)
	dst, sum := mergeTo(t, base, fixed, Options{})
	if sum.Biases != 6 || sum.Replaced != 6 || sum.Modules != 14 {
		t.Errorf("summary: %d biases, %d replaced, %d modules; want 6, 6, 14", sum.Biases, sum.Replaced, sum.Modules)
	}
	ref := reference(t, baseT, adT, readRefConfig(t, fixed))
	compare(t, loadTensors(t, dst), ref, nil)
}

// TestQuantizedBase merges the llama adapter into the bitsandbytes 4-bit
// base (made by bitsandbytes on CUDA) with --quantize: the output equals
// qconv convert of the dense merge, whose values are the reference merge
// of the base dequantized as bitsandbytes does.
func TestQuantizedBase(t *testing.T) {
	base, ad := filepath.Join(peftDir, "llama-base-nf4"), filepath.Join(peftDir, "llama-adapter")
	q, sum := mergeTo(t, base, ad, Options{Output: OutputQuantized})
	if !sum.Quantized || !sum.QuantizedBase || sum.TensorsQuantized != 14 || sum.Requantized != 0 {
		t.Fatalf("summary %+v", sum)
	}
	dense, _ := mergeTo(t, base, ad, Options{Output: OutputDense})
	conv := filepath.Join(t.TempDir(), "conv")
	if _, err := convert.Convert(context.Background(), dense, conv, convert.Options{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"model.safetensors", "config.json"} {
		a, _ := os.ReadFile(filepath.Join(q, f))
		b, _ := os.ReadFile(filepath.Join(conv, f))
		if string(a) != string(b) {
			t.Errorf("%s of the 4-bit merge differs from convert of the dense merge", f)
		}
	}
	// The dense merge against the reference, from the dequantized base.
	deq := filepath.Join(t.TempDir(), "deq")
	if _, err := dequant.Dequantize(context.Background(), base, deq, dequant.Options{}); err != nil {
		t.Fatal(err)
	}
	ref := reference(t, loadTensors(t, deq), loadTensors(t, filepath.Join(ad, AdapterWeightsName)), readRefConfig(t, ad))
	compare(t, loadTensors(t, dense), ref, nil)
}

// TestQuantizedBasePEFT merges two adapters into the 4-bit base as PEFT
// does (the default output) and compares every tensor with PEFT's own
// merge of the same adapter into the same base on CUDA
// (testdata/peft/llama-merged-nf4*, scripts/gen_peft_nf4_refs.py): the
// 4-bit weights no adapter changes are the base's bytes, the merged ones
// are quantized from their float32 sums with quant-state dtype float32,
// and their packed codes and absmax codes equal PEFT's. What may differ
// is what PEFT's float32 matmul rounds otherwise (qconv's delta is
// correctly rounded): a nested_absmax value by an ulp, a quant state's
// nested_offset in its last digits, and the embedding, which PEFT merges
// with its delta rounded to bf16 first (one bf16 ulp).
func TestQuantizedBasePEFT(t *testing.T) {
	base := filepath.Join(peftDir, "llama-base-nf4")
	baseTs := loadTensors(t, base)
	for _, c := range []struct {
		adapter, peft string
		merged        int // 4-bit weights the adapter changes
	}{
		{"llama-adapter", "llama-merged-nf4", 14},
		{"llama-adapter-qv", "llama-merged-nf4-qv", 4},
	} {
		t.Run(c.adapter, func(t *testing.T) {
			q, sum := mergeTo(t, base, filepath.Join(peftDir, c.adapter), Options{})
			if !sum.Quantized || sum.TensorsQuantized != 14 || sum.Requantized != c.merged {
				t.Fatalf("summary %+v", sum)
			}
			got, want := loadTensors(t, q), loadTensors(t, filepath.Join(peftDir, c.peft))
			if len(got) != len(want) {
				t.Errorf("%d tensors, PEFT's merge has %d", len(got), len(want))
			}
			var equal, total, merged int
			for name, w := range want {
				g, ok := got[name]
				if !ok || g.dtype != w.dtype || !slices.Equal(g.shape, w.shape) {
					t.Errorf("%s: %v %v in qconv's merge, PEFT's is %v %v", name, g.dtype, g.shape, w.dtype, w.shape)
					continue
				}
				total += len(w.raw)
				for i := range w.raw {
					if g.raw[i] == w.raw[i] {
						equal++
					}
				}
				qs := strings.Index(name, ".quant_state.")
				switch {
				case qs > 0:
					var gs, ws, bs map[string]any
					if err := json.Unmarshal(g.raw, &gs); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					_ = json.Unmarshal(w.raw, &ws)
					_ = json.Unmarshal(baseTs[name].raw, &bs)
					if gs["dtype"] != ws["dtype"] {
						t.Errorf("%s: dtype %v, PEFT's %v", name, gs["dtype"], ws["dtype"])
					}
					if gs["dtype"] == "float32" {
						merged++
					} else if string(g.raw) != string(baseTs[name].raw) {
						t.Errorf("%s: an unchanged weight's quant state differs from the base's", name)
					}
					go1, _ := gs["nested_offset"].(float64)
					wo, _ := ws["nested_offset"].(float64)
					if math.Abs(go1-wo) > 1e-6*math.Abs(wo) {
						t.Errorf("%s: nested_offset %v, PEFT's %v", name, go1, wo)
					}
				case strings.HasSuffix(name, ".nested_absmax"):
					for i := 0; i < w.n(); i++ {
						// max |absmax - nested_offset|: both may be a few ulps off.
						if d := math.Abs(g.at(i) - w.at(i)); d > math.Abs(w.at(i))*1e-6 {
							t.Errorf("%s[%d] = %v, PEFT's %v", name, i, g.at(i), w.at(i))
						}
					}
				case name == "model.embed_tokens.weight":
					// PEFT rounds the delta to bf16 before adding it: an error
					// of up to half a bf16 ulp of the delta, then one of the sum.
					b := baseTs[name]
					for i := 0; i < w.n(); i++ {
						delta := g.at(i) - b.at(i)
						if d := math.Abs(g.at(i) - w.at(i)); d > math.Abs(delta)*0x1p-8+math.Abs(g.at(i))*0x1p-7 {
							t.Errorf("%s[%d] = %v, PEFT's %v (base %v): further apart than PEFT's roundings explain", name, i, g.at(i), w.at(i), b.at(i))
							break
						}
					}
				case string(g.raw) != string(w.raw):
					t.Errorf("%s differs from PEFT's merge", name)
				}
				if b, ok := baseTs[name]; ok && baseTs[name+".absmax"].raw != nil {
					// A 4-bit weight: unchanged ones are the base's bytes.
					isMerged := strings.Contains(string(got[name+".quant_state.bitsandbytes__nf4"].raw), `"float32"`)
					if !isMerged && string(b.raw) != string(g.raw) {
						t.Errorf("%s: no adapter changes it, but its packed bytes differ from the base's", name)
					}
				}
			}
			if merged != c.merged {
				t.Errorf("%d quant states of dtype float32, want %d", merged, c.merged)
			}
			t.Logf("%s: %d of %d bytes equal PEFT's merge (4-bit weights: all packed and absmax codes)", c.adapter, equal, total)
		})
	}
}

// TestQuantizeEqualsConvert: a dense base merged with --quantize equals
// convert of the dense merge, byte for byte, with 1 and 4 workers, and
// with non-default settings.
func TestQuantizeEqualsConvert(t *testing.T) {
	base, ad := filepath.Join(peftDir, "llama-base"), filepath.Join(peftDir, "llama-adapter")
	dense, _ := mergeTo(t, base, ad, Options{})
	for _, co := range []convert.Options{{Workers: 1}, {Workers: 4, QuantType: 2, Blocksize: 128, NoDoubleQuant: true}} {
		q, _ := mergeTo(t, base, ad, Options{Output: OutputQuantized, Convert: co})
		conv := filepath.Join(t.TempDir(), "conv")
		if _, err := convert.Convert(context.Background(), dense, conv, co); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"model.safetensors", "config.json"} {
			a, _ := os.ReadFile(filepath.Join(q, f))
			b, _ := os.ReadFile(filepath.Join(conv, f))
			if string(a) != string(b) || len(a) == 0 {
				t.Errorf("%+v: %s differs from convert of the dense merge", co, f)
			}
		}
	}
}

// writeAdapter writes an adapter directory: the config copied from cfg,
// the tensors in adapter_model.safetensors.
func writeAdapter(t *testing.T, dir, cfg string, ts map[string]tensor) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, AdapterConfigName), b, 0o666); err != nil {
		t.Fatal(err)
	}
	writeSafetensors(t, filepath.Join(dir, AdapterWeightsName), ts)
}

func writeSafetensors(t *testing.T, path string, ts map[string]tensor) {
	t.Helper()
	var specs []safetensors.TensorSpec
	for name, x := range ts {
		specs = append(specs, safetensors.TensorSpec{Name: name, DType: x.dtype, Shape: x.shape})
	}
	plan, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	out := slices.Clone(plan.Header)
	for _, ti := range plan.Tensors {
		out = append(out, ts[ti.Name].raw...)
	}
	if err := os.WriteFile(path, out, 0o666); err != nil {
		t.Fatal(err)
	}
}
