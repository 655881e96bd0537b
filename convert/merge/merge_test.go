package merge

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/synth"
)

// editConfig copies the llama adapter to a new directory with its
// adapter_config.json edited by replacing old with new.
func editConfig(t *testing.T, old, new string) string {
	t.Helper()
	src := filepath.Join(peftDir, "llama-adapter")
	b, err := os.ReadFile(filepath.Join(src, AdapterConfigName))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if !strings.Contains(s, old) {
		t.Fatalf("adapter_config.json has no %q", old)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, AdapterConfigName), []byte(strings.Replace(s, old, new, 1)), 0o666); err != nil {
		t.Fatal(err)
	}
	w, err := os.ReadFile(filepath.Join(src, AdapterWeightsName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, AdapterWeightsName), w, 0o666); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRefusals: what cannot be merged is an error that says why, and a
// harmless look-alike of each is merged.
func TestRefusals(t *testing.T) {
	base := filepath.Join(peftDir, "llama-base")
	llamaAd := loadTensors(t, filepath.Join(peftDir, "llama-adapter", AdapterWeightsName))
	withTensors := func(edit func(map[string]tensor)) string {
		ts := map[string]tensor{}
		for k, v := range llamaAd {
			ts[k] = v
		}
		edit(ts)
		dir := t.TempDir()
		writeAdapter(t, dir, filepath.Join(peftDir, "llama-adapter", AdapterConfigName), ts)
		return dir
	}
	for _, tc := range []struct {
		name, adapter, base, want string
	}{
		{"dora", editConfig(t, `"use_dora": false`, `"use_dora": true`), base, "use_dora (DoRA"},
		{"not lora", editConfig(t, `"peft_type": "LORA"`, `"peft_type": "IA3"`), base, "peft_type IA3 (only LORA adapters"},
		{"trainable tokens", editConfig(t, `"trainable_token_indices": null`, `"trainable_token_indices": [1, 2]`), base, "trainable_token_indices"},
		{"rank", editConfig(t, `"down_proj": 4`, `"down_proj": 8`), base, `module "model.layers.0.mlp.down_proj": lora_A.weight is [4, 128] and lora_B.weight is [64, 4], but its rank is 8`},
		{"other base", filepath.Join(peftDir, "llama-adapter"), filepath.Join(peftDir, "gpt2-base"), `which ../../testdata/peft/gpt2-base does not have`},
		{"fan_in_fan_out", editConfig(t, `"fan_in_fan_out": false`, `"fan_in_fan_out": true`), base, "[in, out] = [lora_A columns, lora_B rows]"},
		{"missing B", withTensors(func(m map[string]tensor) {
			delete(m, "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight")
		}), base, `module "model.layers.0.mlp.up_proj" has lora_A.weight but no lora_B.weight`},
		{"dora tensor", withTensors(func(m map[string]tensor) {
			m["base_model.model.model.layers.0.mlp.up_proj.lora_magnitude_vector"] = tensor{dtype.F32, []int64{128}, make([]byte, 512)}
		}), base, "DoRA magnitude vector"},
		{"whole tensor", withTensors(func(m map[string]tensor) {
			m["base_model.model.model.layers.0.mlp.up_proj.scale"] = tensor{dtype.F32, []int64{128}, make([]byte, 512)}
		}), base, `replaces "model.layers.0.mlp.up_proj.scale", which`},
		{"whole shape", withTensors(func(m map[string]tensor) {
			m["base_model.model.lm_head.weight"] = tensor{dtype.BF16, []int64{128, 64}, make([]byte, 128*64*2)}
		}), base, `"base_model.model.lm_head.weight" is BF16 [128, 64], but`},
		{"nan", withTensors(func(m map[string]tensor) {
			x := m["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"]
			raw := append([]byte(nil), x.raw...)
			copy(raw[8:], []byte{0, 0, 0xc0, 0x7f})
			m["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] = tensor{x.dtype, x.shape, raw}
		}), base, `"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": element 2 is NaN`},
		{"no adapter", base, base, "not a PEFT adapter directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Merge(context.Background(), tc.base, tc.adapter, filepath.Join(t.TempDir(), "out"), Options{Convert: convert.Options{Workers: 2}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Look-alikes that merge: use_dora false written out, an empty
	// trainable_token_indices list, a rank_pattern that matches nothing.
	for _, ad := range []string{
		editConfig(t, `"trainable_token_indices": null`, `"trainable_token_indices": []`),
		editConfig(t, `"down_proj": 4`, `"down_proj": 4, "nothing_matches": 3`),
	} {
		if _, err := Merge(context.Background(), base, ad, filepath.Join(t.TempDir(), "out"), Options{}); err != nil {
			t.Errorf("look-alike: %v", err)
		}
	}
}

// TestCheckListsAll: Check returns every problem, not just the first.
func TestCheckListsAll(t *testing.T) {
	a, err := OpenAdapter(filepath.Join(peftDir, "qwen2-adapter"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ck := openCk(t, filepath.Join(peftDir, "qwen2-base"))
	errs := Check(ck, a)
	if len(errs) != 8 { // o_proj, gate, up, down of 2 layers have no bias
		t.Errorf("%d problems, want 8: %v", len(errs), errs)
	}
}

// TestPartsAndResume: a merge split in two parts plus finalize equals a
// whole one, and a changed adapter is refused by the work directory.
func TestPartsAndResume(t *testing.T) {
	base, ad := filepath.Join(peftDir, "llama-base"), filepath.Join(peftDir, "llama-adapter")
	whole, _ := mergeTo(t, base, ad, Options{Convert: convert.Options{MaxShardSize: 60_000}})
	dst := filepath.Join(t.TempDir(), "out")
	co := convert.Options{MaxShardSize: 60_000, Workers: 2}
	for i := range 2 {
		o := co
		o.Part = convert.Part{Index: i, Count: 2}
		if _, err := Merge(context.Background(), base, ad, dst, Options{Convert: o}); err != nil {
			t.Fatal(err)
		}
	}
	// A changed adapter (here: only its modification time) is refused.
	ad2 := editConfig(t, `"r": 8`, `"r": 8`)
	o := co
	o.Finalize = true
	if _, err := Merge(context.Background(), base, ad2, dst, Options{Convert: o}); err == nil || !strings.Contains(err.Error(), "partial output") {
		t.Fatalf("finalize with another adapter: %v", err)
	}
	if _, err := Merge(context.Background(), base, ad, dst, Options{Convert: o}); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(whole)
	if len(ents) < 4 {
		t.Fatalf("want a sharded output, got %d files", len(ents))
	}
	for _, e := range ents {
		a, _ := os.ReadFile(filepath.Join(whole, e.Name()))
		b, _ := os.ReadFile(filepath.Join(dst, e.Name()))
		if string(a) != string(b) {
			t.Errorf("%s differs between the whole and the partitioned merge", e.Name())
		}
	}
}

// TestDType: --dtype f32 writes the merged weights correctly rounded to
// float32 and the other tensors cast exactly.
func TestDType(t *testing.T) {
	base, ad := filepath.Join(peftDir, "llama-base"), filepath.Join(peftDir, "llama-adapter")
	dst, _ := mergeTo(t, base, ad, Options{Convert: convert.Options{DType: dtype.F32}})
	got := loadTensors(t, dst)
	baseT := loadTensors(t, base)
	conv := map[string]tensor{}
	for name, x := range baseT {
		raw := make([]byte, 4*x.n())
		for i := 0; i < x.n(); i++ {
			encode(raw[4*i:], x.at(i), dtype.F32)
		}
		conv[name] = tensor{dtype.F32, x.shape, raw}
	}
	ref := reference(t, conv, loadTensors(t, filepath.Join(ad, AdapterWeightsName)), readRefConfig(t, ad))
	compare(t, got, ref, nil)
	if got["model.norm.weight"].dtype != dtype.F32 {
		t.Errorf("norm is %v, want F32", got["model.norm.weight"].dtype)
	}
}

func openCk(t *testing.T, path string) *checkpoint.Checkpoint {
	t.Helper()
	ck, err := checkpoint.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	return ck
}

// TestQuantizedConv1DBase: a 4-bit GPT-2 base (its Conv1D weights are
// quantized transposed) is refused with the way out.
func TestQuantizedConv1DBase(t *testing.T) {
	q := filepath.Join(t.TempDir(), "gpt2-nf4")
	if _, err := convert.Convert(context.Background(), filepath.Join(peftDir, "gpt2-base"), q, convert.Options{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	_, err := Merge(context.Background(), q, filepath.Join(peftDir, "gpt2-adapter"), filepath.Join(t.TempDir(), "out"), Options{})
	if err == nil || !strings.Contains(err.Error(), "is a 4-bit Conv1D weight, quantized transposed") || !strings.Contains(err.Error(), "qconv dequant") {
		t.Fatalf("got %v", err)
	}
}

// TestShardedBase: the golden tiny Llama as one bf16 file and as ten f32
// shards (the same values) merge with the same adapter into the same
// bytes (--dtype bf16 for the f32 one): sharded input, dtype resolution
// and the cast of unmerged tensors go through the pipeline.
func TestShardedBase(t *testing.T) {
	const models = "../../testdata/golden/models"
	ck := openCk(t, filepath.Join(models, "tiny-llama-bf16"))
	var base []synth.Tensor
	for _, x := range ck.Tensors() {
		base = append(base, synth.Tensor{Name: x.Name, DType: x.DType, Shape: x.Shape})
	}
	ad := filepath.Join(t.TempDir(), "adapter")
	if err := synth.WriteLoRA(ad, base, 4, 7); err != nil {
		t.Fatal(err)
	}
	a, sa := mergeTo(t, filepath.Join(models, "tiny-llama-bf16"), ad, Options{})
	b, sb := mergeTo(t, filepath.Join(models, "tiny-llama-f32"), ad, Options{Convert: convert.Options{DType: dtype.BF16}})
	if sa.Modules != 14 || sb.Modules != 14 || len(sb.Files) != 1 {
		t.Fatalf("modules %d and %d, files %v", sa.Modules, sb.Modules, sb.Files)
	}
	x, _ := os.ReadFile(filepath.Join(a, "model.safetensors"))
	y, _ := os.ReadFile(filepath.Join(b, "model.safetensors"))
	if len(x) == 0 || string(x) != string(y) {
		t.Error("the merges of the bf16 file and of the f32 shards differ")
	}
	ref := reference(t, loadTensors(t, filepath.Join(models, "tiny-llama-bf16")), loadTensors(t, filepath.Join(ad, AdapterWeightsName)), readRefConfig(t, ad))
	compare(t, loadTensors(t, a), ref, nil)
}

// TestQuantizedBaseSharded: a merge into the 4-bit base written as several
// shards holds the same tensors as one file, and each 4-bit weight, copied
// or requantized, is followed by its quant state in the order a freshly
// quantized weight's entries have (weight, absmax, quant_map,
// nested_absmax, nested_quant_map, quant_state), so that a shard boundary
// falls between them only as it would for convert's own output.
func TestQuantizedBaseSharded(t *testing.T) {
	base, ad := filepath.Join(peftDir, "llama-base-nf4"), filepath.Join(peftDir, "llama-adapter-qv")
	one, _ := mergeTo(t, base, ad, Options{})
	many, sum := mergeTo(t, base, ad, Options{Convert: convert.Options{MaxShardSize: 12 << 10}})
	if len(sum.Files) < 5 {
		t.Fatalf("%d files, want several", len(sum.Files))
	}
	want, got := loadTensors(t, one), loadTensors(t, many)
	if len(want) != len(got) {
		t.Fatalf("%d tensors in the shards, %d in one file", len(got), len(want))
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || string(g.raw) != string(w.raw) {
			t.Errorf("%s differs between the sharded and the one-file merge", name)
		}
	}
	ck := openCk(t, many)
	file := map[string]int{}
	for _, x := range ck.Tensors() {
		file[x.Name] = slices.Index(ck.Shards, x.Shard)
	}
	weights, split := 0, 0
	for name := range file {
		w, ok := strings.CutSuffix(name, ".absmax")
		if !ok || strings.HasSuffix(w, ".nested") {
			continue
		}
		weights++
		chain := []string{w, w + ".absmax", w + ".quant_map", w + ".nested_absmax", w + ".nested_quant_map", w + ".quant_state.bitsandbytes__nf4"}
		for k := 1; k < len(chain); k++ {
			a, okA := file[chain[k-1]]
			b, okB := file[chain[k]]
			if !okA || !okB || b < a || b > a+1 {
				t.Errorf("%s in shard %d (%v) after %s in shard %d (%v)", chain[k], b, okB, chain[k-1], a, okA)
			}
			if b != a {
				split++
			}
		}
	}
	if weights != 14 {
		t.Errorf("%d 4-bit weights, want 14", weights)
	}
	t.Logf("%d files, %d weights split from part of their quant state by a shard boundary", len(sum.Files), split)
}
