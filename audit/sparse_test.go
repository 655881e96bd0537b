package audit_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/audit/rules"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// writeSparseCheckpoint writes, under dir, a Llama-70B-shaped 4-bit
// checkpoint (NF4, double quant, uint8 storage, dense tensors in bf16)
// of layers decoder layers split into shards, with config.json and an
// index when shards > 1. Only headers and the small statistics tensors
// (code books and quant-state JSON) are written; the packed weights and
// absmax are holes in sparse files, so a 100 GB checkpoint takes a few MB
// of disk. It returns the total size of the .safetensors files.
func writeSparseCheckpoint(t testing.TB, dir string, layers, shards int) int64 {
	t.Helper()
	const hidden, inter, vocab = 8192, 28672, 128256
	type weight struct {
		name  string
		shape []int64
	}
	var dense []weight
	quant := make([][]weight, shards) // per shard
	dense = append(dense, weight{"model.embed_tokens.weight", []int64{vocab, hidden}}, weight{"lm_head.weight", []int64{vocab, hidden}},
		weight{"model.norm.weight", []int64{hidden}})
	for l := range layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		s := l * shards / layers
		quant[s] = append(quant[s],
			weight{p + "self_attn.q_proj.weight", []int64{hidden, hidden}}, weight{p + "self_attn.k_proj.weight", []int64{1024, hidden}},
			weight{p + "self_attn.v_proj.weight", []int64{1024, hidden}}, weight{p + "self_attn.o_proj.weight", []int64{hidden, hidden}},
			weight{p + "mlp.gate_proj.weight", []int64{inter, hidden}}, weight{p + "mlp.up_proj.weight", []int64{inter, hidden}},
			weight{p + "mlp.down_proj.weight", []int64{hidden, inter}})
		dense = append(dense, weight{p + "input_layernorm.weight", []int64{hidden}}, weight{p + "post_attention_layernorm.weight", []int64{hidden}})
	}
	book := bnb.CodeBook(bnb.NF4)
	dmap := bnb.DynamicMap()
	f32 := func(vals []float32) []byte {
		var b []byte
		for _, v := range vals {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
		return b
	}
	weightMap := map[string]string{}
	var total, dataTotal int64
	for s := range shards {
		name := "model.safetensors"
		if shards > 1 {
			name = fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, shards)
		}
		var specs []safetensors.TensorSpec
		data := map[string][]byte{}
		if s == 0 {
			for _, w := range dense {
				specs = append(specs, safetensors.TensorSpec{Name: w.name, DType: dtype.BF16, Shape: w.shape})
			}
		}
		for _, w := range quant[s] {
			n := w.shape[0] * w.shape[1]
			nb := bnb.NumBlocks(n, 64)
			js := bnb.QuantState{QuantType: bnb.NF4, Blocksize: 64, DType: "bfloat16", Shape: w.shape,
				DoubleQuant: true, NestedBlocksize: 256, NestedDType: "float32", NestedOffset: 0.0123}.MarshalPython()
			specs = append(specs,
				safetensors.TensorSpec{Name: w.name, DType: dtype.U8, Shape: []int64{bnb.PackedBytes(n), 1}},
				safetensors.TensorSpec{Name: w.name + ".absmax", DType: dtype.U8, Shape: []int64{nb}},
				safetensors.TensorSpec{Name: w.name + ".quant_map", DType: dtype.F32, Shape: []int64{16}},
				safetensors.TensorSpec{Name: w.name + ".nested_absmax", DType: dtype.F32, Shape: []int64{bnb.NumBlocks(nb, 256)}},
				safetensors.TensorSpec{Name: w.name + ".nested_quant_map", DType: dtype.F32, Shape: []int64{256}},
				safetensors.TensorSpec{Name: w.name + ".quant_state.bitsandbytes__nf4", DType: dtype.U8, Shape: []int64{int64(len(js))}},
			)
			data[w.name+".quant_map"] = f32(book[:])
			data[w.name+".nested_quant_map"] = f32(dmap[:])
			data[w.name+".quant_state.bitsandbytes__nf4"] = js
		}
		plan, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(plan.Header, 0); err != nil {
			t.Fatal(err)
		}
		for _, ti := range plan.Tensors {
			weightMap[ti.Name] = name
			if b := data[ti.Name]; b != nil {
				if _, err := f.WriteAt(b, plan.DataOffset()+ti.Begin); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := f.Truncate(plan.FileSize()); err != nil {
			t.Skipf("cannot make a %d-byte sparse file here: %v", plan.FileSize(), err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		total += plan.FileSize()
		dataTotal += plan.DataSize
	}
	cfg := map[string]any{
		"architectures": []string{"LlamaForCausalLM"}, "dtype": "bfloat16", "model_type": "llama",
		"quantization_config": map[string]any{
			"bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4",
			"bnb_4bit_use_double_quant": true, "load_in_4bit": true, "quant_method": "bitsandbytes",
		},
	}
	writeJSONFile(t, filepath.Join(dir, "config.json"), cfg)
	if shards > 1 {
		writeJSONFile(t, filepath.Join(dir, "model.safetensors.index.json"),
			map[string]any{"metadata": map[string]any{"total_size": dataTotal}, "weight_map": weightMap})
	}
	return total
}

func writeJSONFile(t testing.TB, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// diskBytes is the space a file really takes (its allocated blocks).
func diskBytes(t *testing.T, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512
	}
	return st.Size()
}

// TestHugeSparseCheckpoint audits a single 110 GB file (240 decoder layers
// of a 70B-shaped 4-bit model, plus bf16 embeddings) that exists only as a
// sparse file, and checks that the audit is clean and allocates little
// memory, so it read only headers and statistics. QCONV_SPARSE_DIR=path keeps a sharded copy there for timing
// the CLI.
func TestHugeSparseCheckpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	size := writeSparseCheckpoint(t, dir, 240, 1)
	path := filepath.Join(dir, "model.safetensors")
	if size < 100e9 {
		t.Fatalf("fixture is only %d bytes", size)
	}
	if d := diskBytes(t, path); d > 1<<30 {
		t.Skipf("the filesystem does not keep the file sparse (%d bytes on disk)", d)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	rep, err := audit.Run([]string{dir}, audit.Options{Rules: rules.All()})
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.PathErrors) > 0 || len(rep.Findings) > 0 {
		t.Fatalf("path errors %v, findings %+v", rep.PathErrors, rep.Findings)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("audited %.1f GB (%d bytes on disk) in %v, %.1f MiB allocated", float64(size)/1e9, diskBytes(t, path), elapsed, float64(alloc)/(1<<20))
	// The header is ~1 MB and there are 1680 quant states of ~200 bytes:
	// reading tensor data would allocate gigabytes.
	if alloc > 256<<20 {
		t.Errorf("the audit allocated %d bytes for a header-only pass", alloc)
	}

	if out := os.Getenv("QCONV_SPARSE_DIR"); out != "" {
		if err := os.MkdirAll(out, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote a %d-byte sharded sparse checkpoint to %s", writeSparseCheckpoint(t, out, 80, 30), out)
	}
}
