package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/audit/rules"
	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

const models = "../testdata/golden/models"

// TestFixGolden repairs the float-storage checkpoints that transformers
// wrote and compares the result byte for byte with the uint8-storage
// checkpoint transformers wrote from the same weights.
func TestFixGolden(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"tiny-llama-bf16-nf4-dq-f32storage", "tiny-llama-bf16-nf4-dq-u8"},
		{"tiny-llama-b-f32-nf4-dq-f32storage", "tiny-llama-b-f32-nf4-dq-u8"},
		{"tiny-llama-bf16-nf4-dq-bf16storage", "tiny-llama-bf16-nf4-dq-u8"},
		{"tiny-llama-b-f32-nf4-dq-bf16storage", "tiny-llama-b-f32-nf4-dq-u8"},
	} {
		t.Run(tc.src, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "fixed")
			res, err := audit.Fix(dst, filepath.Join(models, tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Retyped) != 14 || res.ConfigReformatted || res.ConfigStorage == "" {
				t.Errorf("result %+v: want 14 retyped weights and a config edited in place", res)
			}
			for _, name := range []string{"model.safetensors", "config.json", "generation_config.json"} {
				got, err := os.ReadFile(filepath.Join(dst, name))
				if err != nil {
					t.Fatal(err)
				}
				want, err := os.ReadFile(filepath.Join(models, tc.want, name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from %s/%s (%d vs %d bytes)", name, tc.want, name, len(got), len(want))
				}
			}
			rep, err := audit.Run([]string{dst}, audit.Options{Rules: rules.All(), Deep: true})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Counts.AtLeast(audit.Warning) != 0 {
				t.Errorf("fixed checkpoint has findings: %+v", rep.Findings)
			}
		})
	}
}

// TestFixReformatsConfig gives Fix a config.json that is not in
// transformers' layout: it must say so, and write the layout transformers
// writes (the uint8-storage checkpoint's config.json).
func TestFixReformatsConfig(t *testing.T) {
	src := t.TempDir()
	from := filepath.Join(models, "tiny-llama-bf16-nf4-dq-f32storage")
	for _, name := range []string{"model.safetensors", "config.json"} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "config.json" {
			var compact bytes.Buffer
			if err := json.Compact(&compact, b); err != nil {
				t.Fatal(err)
			}
			b = compact.Bytes()
		}
		if err := os.WriteFile(filepath.Join(src, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(t.TempDir(), "fixed")
	res, err := audit.Fix(dst, src)
	if err != nil {
		t.Fatal(err)
	}
	if !res.ConfigReformatted || res.ConfigStorage != "float32" {
		t.Errorf("result %+v: want a reformatted config whose storage was float32", res)
	}
	got, err := os.ReadFile(filepath.Join(dst, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("config.json:\n%s\nwant\n%s", got, want)
	}
}

func TestFixRefuses(t *testing.T) {
	src := filepath.Join(models, "tiny-llama-bf16-nf4-dq-f32storage")
	existing := t.TempDir()
	if _, err := audit.Fix(existing, src); err == nil {
		t.Error("Fix wrote into an existing directory")
	}
	// Force replaces an existing directory, but never the input or one
	// holding it.
	if _, err := audit.FixWith(existing, src, audit.FixOptions{Force: true}); err != nil {
		t.Errorf("Fix --force into an existing directory: %v", err)
	}
	if _, err := audit.FixWith(src, src, audit.FixOptions{Force: true}); err == nil {
		t.Error("Fix --force replaced its input")
	}
	if _, err := audit.FixWith(filepath.Dir(src), src, audit.FixOptions{Force: true}); err == nil {
		t.Error("Fix --force replaced the directory holding its input")
	}
	// Nor a new directory inside the input (issue 14: audit --fix DST
	// PATH with DST inside PATH wrote into the input), directly or
	// through a link to it.
	in := t.TempDir()
	for _, name := range []string{"model.safetensors", "config.json"} {
		b, _ := os.ReadFile(filepath.Join(src, name))
		os.WriteFile(filepath.Join(in, name), b, 0o666)
	}
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(in, link)
	for _, dst := range []string{filepath.Join(in, "fixed"), filepath.Join(in, "a", "b"), filepath.Join(link, "fixed")} {
		for _, force := range []bool{false, true} {
			if _, err := audit.FixWith(dst, in, audit.FixOptions{Force: force}); err == nil || !strings.Contains(err.Error(), "inside the input") {
				t.Errorf("Fix into %s (force %v): %v", dst, force, err)
			}
		}
	}
	if ents, _ := os.ReadDir(in); len(ents) != 2 {
		t.Errorf("the input now holds %d entries", len(ents))
	}
	// Nothing to repair: dst is still written, an unchanged copy whose
	// files are hard links where the file system allows.
	clean := filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8")
	unchanged := filepath.Join(t.TempDir(), "out")
	res, err := audit.Fix(unchanged, clean)
	if err != nil || !res.Unchanged {
		t.Fatalf("Fix of a correct checkpoint: %+v, %v; want an unchanged copy", res, err)
	}
	for _, name := range []string{"model.safetensors", "config.json"} {
		got, _ := os.ReadFile(filepath.Join(unchanged, name))
		want, _ := os.ReadFile(filepath.Join(clean, name))
		if len(want) == 0 || !bytes.Equal(got, want) {
			t.Errorf("unchanged copy: %s differs from the input", name)
		}
	}
	// Linked lists exactly the files that are hard links to the input's
	// (all of them where the temporary directory and testdata share a
	// file system, none otherwise).
	entries, _ := os.ReadDir(unchanged)
	for _, e := range entries {
		a, _ := os.Stat(filepath.Join(unchanged, e.Name()))
		b, _ := os.Stat(filepath.Join(clean, e.Name()))
		if linked := slices.Contains(res.Linked, e.Name()); linked != os.SameFile(a, b) {
			t.Errorf("%s: in Linked %v, hard link %v", e.Name(), linked, os.SameFile(a, b))
		}
	}
	dst := filepath.Join(t.TempDir(), "out")
	// A single file: the packed weights are repaired, no config is read.
	if _, err := audit.Fix(dst, filepath.Join(src, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "model.safetensors"))
	want, _ := os.ReadFile(filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8", "model.safetensors"))
	if !bytes.Equal(got, want) {
		t.Error("fixed single file differs from the uint8 golden file")
	}
	entries, _ = os.ReadDir(filepath.Dir(dst))
	if len(entries) != 1 {
		t.Errorf("temporary files left beside the output: %v", entries)
	}
}

// TestFixSharded splits the float32-storage golden model into two shards
// (a packed weight in one shard, its statistics in the other), repairs it,
// and checks every output tensor against the uint8 golden model.
func TestFixSharded(t *testing.T) {
	src := filepath.Join(models, "tiny-llama-bf16-nf4-dq-f32storage")
	in, err := safetensors.Open(filepath.Join(src, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dir := filepath.Join(t.TempDir(), "sharded")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shardOf := func(name string) string {
		if strings.HasPrefix(name, "model.layers.0.") && !strings.Contains(name, "q_proj.weight.") {
			return "model-00001-of-00002.safetensors"
		}
		return "model-00002-of-00002.safetensors"
	}
	specs := map[string][]safetensors.TensorSpec{}
	weightMap := map[string]string{}
	var total int64
	for _, ti := range in.Tensors() {
		s := shardOf(ti.Name)
		specs[s] = append(specs[s], safetensors.TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape})
		weightMap[ti.Name] = s
		total += ti.Size()
	}
	for s, sp := range specs {
		plan, err := safetensors.NewPlan(in.Metadata(), sp)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		w, err := safetensors.NewWriter(&buf, plan)
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range plan.Tensors {
			orig, _ := in.Tensor(ti.Name)
			if err := w.WriteTensor(ti.Name, in.SectionReader(orig)); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, s), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	index, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap})
	cfg, _ := os.ReadFile(filepath.Join(src, "config.json"))
	os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), index, 0o644)
	os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644)

	rep, err := audit.Run([]string{dir}, audit.Options{Rules: rules.All()})
	if err != nil || rep.Counts.Error != 14 || rep.Counts.Warning != 0 {
		t.Fatalf("sharded float32-storage input: %v, counts %+v, findings %+v", err, rep.Counts, rep.Findings)
	}

	dst := filepath.Join(t.TempDir(), "fixed")
	res, err := audit.Fix(dst, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rewritten) != 2 || len(res.Retyped) != 14 {
		t.Errorf("result %+v", res)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "model.safetensors.index.json")); !bytes.Equal(got, index) {
		t.Error("the index was not copied unchanged")
	}
	rep, err = audit.Run([]string{dst}, audit.Options{Rules: rules.All(), Deep: true})
	if err != nil || rep.Counts.AtLeast(audit.Warning) != 0 {
		t.Fatalf("fixed checkpoint: %v, findings %+v", err, rep.Findings)
	}
	want, err := safetensors.Open(filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	n := 0
	for s := range specs {
		out, err := safetensors.Open(filepath.Join(dst, s))
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range out.Tensors() {
			wt, ok := want.Tensor(ti.Name)
			if !ok || wt.DType != ti.DType || !slices.Equal(wt.Shape, ti.Shape) {
				t.Errorf("%s: %s %v, want %s %v", ti.Name, ti.DType, ti.Shape, wt.DType, wt.Shape)
				continue
			}
			a, _ := out.ReadTensor(ti.Name)
			b, _ := want.ReadTensor(ti.Name)
			if !bytes.Equal(a, b) {
				t.Errorf("%s: bytes differ from the uint8 golden", ti.Name)
			}
			n++
		}
		out.Close()
	}
	if n != len(want.Tensors()) {
		t.Errorf("%d tensors in the output, want %d", n, len(want.Tensors()))
	}
}

// TestConverterOutputAuditsClean converts golden sources with qconv's
// converter, in several configurations, and audits the results: they must
// have no errors or warnings, with --deep too.
func TestConverterOutputAuditsClean(t *testing.T) {
	for _, tc := range []struct {
		src  string
		opts convert.Options
	}{
		{"tiny-llama-bf16", convert.Options{}},
		{"tiny-llama-f32", convert.Options{DType: dtype.BF16, QuantType: bnb.FP4}},
		{"tiny-llama-b-f32", convert.Options{DType: dtype.F16, NoDoubleQuant: true, MaxShardSize: 100 << 10}},
		{"tiny-llama-bf16", convert.Options{Blocksize: 128, Workers: 1}},
	} {
		t.Run(tc.src, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "out")
			if _, err := convert.Convert(context.Background(), filepath.Join(models, tc.src), dst, tc.opts); err != nil {
				t.Fatal(err)
			}
			rep, err := audit.Run([]string{dst}, audit.Options{Rules: rules.All(), Deep: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.PathErrors) > 0 || rep.Counts.AtLeast(audit.Warning) > 0 {
				t.Errorf("converter output has findings: %v %+v", rep.PathErrors, rep.Findings)
			}
		})
	}
}
