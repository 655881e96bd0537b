package checkpoint

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

var modelsDir = filepath.Join("..", "..", "testdata", "golden", "models")

// want holds facts about the reference checkpoints. Parameter counts and
// sizes were computed from the file headers with an independent Python
// script; for the full-precision models they equal transformers' own
// total_parameters (500352) and total_size in tiny-llama-f32's index.
var want = map[string]struct {
	shards, tensors int
	params          int64 // logical
	quantized       int64 // logical elements of packed weights
	packedBytes     int64
	size            int64 // sum of tensor bytes
	dt              dtype.DType
}{
	"tiny-llama-b-f32":                    {1, 21, 361088, 0, 0, 1444352, dtype.F32},
	"tiny-llama-b-f32-fp4-u8-f16":         {1, 63, 361088, 294912, 167886, 300238, dtype.F16},
	"tiny-llama-b-f32-nf4-dq-bf16storage": {1, 91, 361088, 294912, 169755, 302107, dtype.BF16},
	"tiny-llama-b-f32-nf4-dq-f32storage":  {1, 91, 361088, 294912, 169755, 302107, dtype.BF16},
	"tiny-llama-b-f32-nf4-dq-u8":          {1, 91, 361088, 294912, 169755, 302107, dtype.BF16},
	"tiny-llama-bf16":                     {1, 21, 500352, 0, 0, 1000704, dtype.BF16},
	"tiny-llama-bf16-fp4-dq-u8":           {1, 91, 500352, 368640, 207796, 471220, dtype.BF16},
	"tiny-llama-bf16-nf4-dq-bf16storage":  {1, 91, 500352, 368640, 207796, 471220, dtype.BF16},
	"tiny-llama-bf16-nf4-dq-f32storage":   {1, 91, 500352, 368640, 207796, 471220, dtype.BF16},
	"tiny-llama-bf16-nf4-dq-u8":           {1, 91, 500352, 368640, 207796, 471220, dtype.BF16},
	"tiny-llama-bf16-nf4-u8":              {1, 63, 500352, 368640, 209372, 472796, dtype.BF16},
	"tiny-llama-f32":                      {10, 21, 500352, 0, 0, 2001408, dtype.F32},
	"tiny-llama-f32-fp4-dq-u8":            {1, 91, 500352, 368640, 207796, 471220, dtype.BF16},
	"tiny-llama-f32-nf4-dq-u8":            {1, 91, 500352, 368640, 207796, 471220, dtype.BF16},
}

func TestOpenGolden(t *testing.T) {
	entries, err := os.ReadDir(modelsDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Fatalf("%d model dirs, want %d", len(entries), len(want))
	}
	for _, e := range entries {
		w, ok := want[e.Name()]
		if !ok {
			t.Errorf("unexpected model dir %s", e.Name())
			continue
		}
		dir := filepath.Join(modelsDir, e.Name())
		t.Run(e.Name(), func(t *testing.T) {
			c, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			wantLayout := LayoutDir
			if w.shards > 1 {
				wantLayout = LayoutSharded
			}
			if c.Layout != wantLayout || len(c.Shards) != w.shards || len(c.Tensors()) != w.tensors {
				t.Errorf("layout %v, %d shards, %d tensors; want %v, %d, %d", c.Layout, len(c.Shards), len(c.Tensors()), wantLayout, w.shards, w.tensors)
			}
			if (c.Index != nil) != (wantLayout == LayoutSharded) {
				t.Errorf("Index = %v", c.Index)
			}
			if dt, ok := c.ConfigDType(); !ok || dt != w.dt {
				t.Errorf("ConfigDType = %v, %v; want %v", dt, ok, w.dt)
			}
			if got := c.TotalSize(); got != w.size {
				t.Errorf("TotalSize = %d, want %d", got, w.size)
			}
			p, err := c.Parameters()
			if err != nil {
				t.Fatal(err)
			}
			wantPacked := 0
			if w.quantized > 0 {
				wantPacked = 14
			}
			if p.Total != w.params || p.Quantized != w.quantized || p.PackedBytes != w.packedBytes || p.PackedWeights != wantPacked {
				t.Errorf("Parameters = %+v, want total %d quantized %d packedBytes %d weights %d", p, w.params, w.quantized, w.packedBytes, wantPacked)
			}
			names := c.Tensors()
			for i := 1; i < len(names); i++ {
				if names[i-1].Name >= names[i].Name {
					t.Fatalf("tensors not sorted: %q before %q", names[i-1].Name, names[i].Name)
				}
			}
			for _, tn := range names {
				got, ok := c.Tensor(tn.Name)
				if !ok || got.Shard != tn.Shard || got.Begin != tn.Begin {
					t.Errorf("Tensor(%q) = %+v, %v", tn.Name, got, ok)
				}
			}
			if _, ok := c.Tensor("no.such.tensor"); ok {
				t.Error("Tensor found a missing name")
			}

			// The single file, opened by its path.
			if w.shards == 1 {
				f, err := Open(filepath.Join(dir, WeightsFileName))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if f.Layout != LayoutFile || len(f.Tensors()) != w.tensors || f.Config == nil || f.Dir != dir {
					t.Errorf("file: layout %v, %d tensors, config %v, dir %q", f.Layout, len(f.Tensors()), f.Config != nil, f.Dir)
				}
			}
		})
	}
}

func TestShardedGolden(t *testing.T) {
	dir := filepath.Join(modelsDir, "tiny-llama-f32")
	indexBytes, err := os.ReadFile(filepath.Join(dir, IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, s := range c.Shards {
		if want := "model-000" + string(rune('0'+(i+1)/10)) + string(rune('0'+(i+1)%10)) + "-of-00010.safetensors"; s.Name != want {
			t.Errorf("shard %d = %s, want %s", i, s.Name, want)
		}
	}
	if c.Index.TotalSize != 2001408 || c.Index.TotalParameters != 500352 || len(c.Index.WeightMap) != 21 {
		t.Errorf("index: %+v", c.Index)
	}
	if tn, _ := c.Tensor("lm_head.weight"); tn.Shard.Name != "model-00009-of-00010.safetensors" {
		t.Errorf("lm_head.weight in %s", tn.Shard.Name)
	}

	// Re-marshal the parsed index.
	got, err := c.Index.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, indexBytes) {
		t.Errorf("Index.Marshal differs:\n%s", got)
	}

	// Build the index from the tensors as a writer would.
	p, err := c.Parameters()
	if err != nil {
		t.Fatal(err)
	}
	var entries []IndexEntry
	for _, tn := range c.Tensors() {
		entries = append(entries, IndexEntry{Tensor: tn.Name, File: tn.Shard.Name})
	}
	got, err = NewIndex(p.Total, c.TotalSize(), entries).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, indexBytes) {
		t.Errorf("NewIndex(...).Marshal differs:\n%s\nwant\n%s", got, indexBytes)
	}
	// total_size is the sum of the data sections, not of the file sizes.
	var data, files int64
	for _, s := range c.Shards {
		data += s.Size() - s.DataOffset()
		files += s.Size()
	}
	if data != c.Index.TotalSize || files == c.Index.TotalSize {
		t.Errorf("data sections %d, files %d, total_size %d", data, files, c.Index.TotalSize)
	}
}

// writeST writes a safetensors file of F32 zeros with the given tensors
// (each of shape [2]).
func writeST(t *testing.T, path string, names ...string) {
	t.Helper()
	specs := make([]safetensors.TensorSpec, len(names))
	for i, n := range names {
		specs[i] = safetensors.TensorSpec{Name: n, DType: dtype.F32, Shape: []int64{2}}
	}
	p, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	b := append(append([]byte(nil), p.Header...), make([]byte, p.DataSize)...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestOpenBroken(t *testing.T) {
	const goodIndex = `{"metadata": {"total_size": 24}, "weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}}`
	cases := []struct {
		name   string
		setup  func(t *testing.T, dir string)
		code   Code
		file   string // base name of the file the problem names
		tensor string
		msg    string // substring of the message
	}{
		{"good", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), goodIndex)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a", "b")
			writeST(t, filepath.Join(dir, "s2.safetensors"), "c")
		}, 0, "", "", ""},
		{"missing shard", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), goodIndex)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a", "b")
		}, CodeShardMissing, "s2.safetensors", "c", "does not exist"},
		{"tensor absent from its shard", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), goodIndex)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a")
			writeST(t, filepath.Join(dir, "s2.safetensors"), "c")
		}, CodeTensorMissing, "s1.safetensors", "b", "does not hold it"},
		{"tensor in the wrong shard", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), goodIndex)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a")
			writeST(t, filepath.Join(dir, "s2.safetensors"), "b", "c")
		}, CodeTensorMissing, "s1.safetensors", "b", "it is in s2.safetensors"},
		{"unlisted tensor", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), goodIndex)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a", "b")
			writeST(t, filepath.Join(dir, "s2.safetensors"), "c", "d")
		}, CodeTensorUnlisted, "s2.safetensors", "d", "not listed"},
		{"duplicate across shards", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), goodIndex)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a", "b")
			writeST(t, filepath.Join(dir, "s2.safetensors"), "b", "c")
		}, CodeTensorDuplicate, "s2.safetensors", "b", "also in s1.safetensors"},
		{"bad index JSON", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), `{"weight_map": {"a": "s1.safetensors",}}`)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a")
		}, CodeIndexInvalid, IndexFileName, "", "offset"},
		{"duplicate key in index", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), `{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}`)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a")
		}, CodeIndexInvalid, IndexFileName, "", `duplicate key "a"`},
		{"path traversal", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), `{"weight_map": {"a": "../s1.safetensors"}}`)
		}, CodeIndexUnsafePath, IndexFileName, "a", "path separator"},
		{"absolute shard path", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), `{"weight_map": {"a": "/etc/passwd"}}`)
		}, CodeIndexUnsafePath, IndexFileName, "a", "path separator"},
		{"dot-dot shard", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), `{"weight_map": {"a": ".."}}`)
		}, CodeIndexUnsafePath, IndexFileName, "a", "not a file name"},
		{"wrong total_size", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), strings.Replace(goodIndex, "24", "25", 1))
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a", "b")
			writeST(t, filepath.Join(dir, "s2.safetensors"), "c")
		}, CodeTotalSize, IndexFileName, "", "hold 24 bytes"},
		{"invalid shard", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), goodIndex)
			writeST(t, filepath.Join(dir, "s1.safetensors"), "a", "b")
			writeFile(t, filepath.Join(dir, "s2.safetensors"), "\x02\x00\x00\x00\x00\x00\x00\x00{}x")
		}, CodeShardInvalid, "s2.safetensors", "", "safetensors rule"},
		{"empty dir", func(t *testing.T, dir string) {}, CodeNoWeights, "", "", "no model.safetensors"},
		{"dir with other safetensors", func(t *testing.T, dir string) {
			writeST(t, filepath.Join(dir, "adapter.safetensors"), "a")
		}, CodeNoWeights, "", "", "found adapter.safetensors"},
		{"both layouts", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, IndexFileName), goodIndex)
			writeST(t, filepath.Join(dir, WeightsFileName), "a", "b", "c")
		}, CodeBothLayouts, IndexFileName, "", "transformers loads"},
		{"bad config", func(t *testing.T, dir string) {
			writeST(t, filepath.Join(dir, WeightsFileName), "a")
			writeFile(t, filepath.Join(dir, ConfigFileName), `{"dtype": "float32", "dtype": "bfloat16"}`)
		}, CodeConfigInvalid, ConfigFileName, "", "duplicate key"},
		{"config not an object", func(t *testing.T, dir string) {
			writeST(t, filepath.Join(dir, WeightsFileName), "a")
			writeFile(t, filepath.Join(dir, ConfigFileName), `[]`)
		}, CodeConfigInvalid, ConfigFileName, "", "not an object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			c, err := Open(dir)
			if tc.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if len(c.Tensors()) != 3 || c.TotalSize() != 24 {
					t.Errorf("%d tensors, %d bytes", len(c.Tensors()), c.TotalSize())
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
			var p *Problem
			if !errors.As(err, &p) {
				t.Fatalf("error %T %v is not a *Problem", err, err)
			}
			wantFile := dir
			if tc.file != "" {
				wantFile = filepath.Join(dir, tc.file)
			}
			if p.Code != tc.code || p.File != wantFile || p.Tensor != tc.tensor || !strings.Contains(p.Msg, tc.msg) {
				t.Errorf("got %v %q %q %q\nwant %v %q %q ...%q...", p.Code, p.File, p.Tensor, p.Msg, tc.code, wantFile, tc.tensor, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), "checkpoint: "+wantFile+": ") {
				t.Errorf("message %q does not name the file", err)
			}
			// The lenient view reports the same first problem, never fails.
			lc, probs := OpenLenient(dir)
			if len(probs) == 0 || probs[0].Code != tc.code {
				t.Errorf("OpenLenient problems = %v", probs)
			}
			if lc == nil {
				t.Fatal("OpenLenient returned no checkpoint")
			}
			lc.Close()
		})
	}
}

func TestOpenLenientView(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, IndexFileName), `{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s3.safetensors"}}`)
	writeST(t, filepath.Join(dir, "s1.safetensors"), "a", "b")
	writeST(t, filepath.Join(dir, "s2.safetensors"), "b", "x")
	c, probs := OpenLenient(dir)
	if c == nil {
		t.Fatal("nil checkpoint")
	}
	defer c.Close()
	var codes []Code
	for _, p := range probs {
		codes = append(codes, p.Code)
	}
	wantCodes := []Code{CodeShardMissing, CodeTensorDuplicate, CodeTensorUnlisted}
	if len(codes) != len(wantCodes) {
		t.Fatalf("problems %v, want codes %v", probs, wantCodes)
	}
	for i := range codes {
		if codes[i] != wantCodes[i] {
			t.Errorf("problem %d: %v, want %v", i, probs[i], wantCodes[i])
		}
	}
	// b comes from the shard the index names, x from the shard holding it.
	if b, _ := c.Tensor("b"); b.Shard == nil || b.Shard.Name != "s2.safetensors" {
		t.Errorf("b from %+v", b.Shard)
	}
	if x, ok := c.Tensor("x"); !ok || x.Shard.Name != "s2.safetensors" {
		t.Errorf("x: %v", ok)
	}
	if len(c.Tensors()) != 3 {
		t.Errorf("%d tensors", len(c.Tensors()))
	}

	if c, probs := OpenLenient(filepath.Join(dir, "nope")); c != nil || len(probs) != 1 || probs[0].Code != CodeNotFound {
		t.Errorf("missing path: %v %v", c, probs)
	}
}

func TestParseIndexErrors(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `{}`, `{"weight_map": []}`, `{"weight_map": {}}`, `{"weight_map": {"a": 1}}`,
		`{"weight_map": {"a": ""}}`, `{"weight_map": {"a": "x\\y"}}`, `{"weight_map": {"a": "x\u0000"}}`,
		`{"metadata": [], "weight_map": {"a": "f"}}`, `{"metadata": {"total_size": -1}, "weight_map": {"a": "f"}}`,
		`{"metadata": {"total_size": "1"}, "weight_map": {"a": "f"}}`, `{"metadata": {"total_size": 1.5}, "weight_map": {"a": "f"}}`,
		`{"metadata": {"total_parameters": 1e30}, "weight_map": {"a": "f"}}`, `{"weight_map": {"a": "f"}} x`,
	} {
		if ix, err := ParseIndex([]byte(in)); err == nil {
			t.Errorf("ParseIndex(%s) = %+v, want error", in, ix)
		} else if p, ok := err.(*Problem); !ok || (p.Code != CodeIndexInvalid && p.Code != CodeIndexUnsafePath) {
			t.Errorf("ParseIndex(%s): %T %v", in, err, err)
		}
	}
	ix, err := ParseIndex([]byte(`{"metadata": null, "other": 1, "weight_map": {"b": "f2", "a": "f1", "c": "f2"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if ix.TotalSize != -1 || ix.TotalParameters != -1 || ix.Metadata != nil {
		t.Errorf("totals: %+v", ix)
	}
	if f := ix.Files(); len(f) != 2 || f[0] != "f1" || f[1] != "f2" {
		t.Errorf("Files = %v", f)
	}
	if f, ok := ix.FileOf("c"); !ok || f != "f2" {
		t.Errorf("FileOf(c) = %q, %v", f, ok)
	}
	if ix.WeightMap[0].Tensor != "b" {
		t.Errorf("weight map not in file order: %v", ix.WeightMap)
	}
	ix, err = ParseIndex([]byte(`{"metadata": {"total_size": 1024.0, "format": "pt"}, "weight_map": {"a": "f"}}`))
	if err != nil || ix.TotalSize != 1024 {
		t.Fatalf("integral float total_size: %v %v", ix, err)
	}
	b, err := ix.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// Other metadata is kept; totals are rewritten as ints.
	if want := "{\n  \"metadata\": {\n    \"format\": \"pt\",\n    \"total_size\": 1024\n  },\n  \"weight_map\": {\n    \"a\": \"f\"\n  }\n}\n"; string(b) != want {
		t.Errorf("Marshal = %q", b)
	}
	if _, err := NewIndex(-1, -1, []IndexEntry{{"a", "f"}, {"a", "g"}}).Marshal(); err == nil {
		t.Error("Marshal accepted a repeated tensor")
	}
}

func TestFindPackedWeights(t *testing.T) {
	names := []string{
		"m.weight", "m.weight.absmax", "m.weight.quant_map", "m.weight.nested_absmax", "m.weight.nested_quant_map",
		"m.weight.quant_state.bitsandbytes__nf4", "m.bias",
		"n.weight", "n.weight.quant_state.bitsandbytes__fp4", "n.weight.absmax",
		"orphan.weight.quant_state.bitsandbytes__nf4", // no weight
		"o.weight", "o.weight.quant_state.bitsandbytes__q8", // unknown quant type
	}
	got := FindPackedWeights(names)
	if len(got) != 2 || got[0].Name != "m.weight" || got[0].QuantType != "nf4" || len(got[0].Companions) != 5 ||
		got[1].Name != "n.weight" || got[1].QuantType != "fp4" || len(got[1].Companions) != 2 {
		t.Errorf("FindPackedWeights = %+v", got)
	}
}

func TestLogicalParametersErrors(t *testing.T) {
	infos := []safetensors.TensorInfo{
		{Name: "w.weight", DType: dtype.U8, Shape: []int64{3, 1}, End: 3},
		{Name: "w.weight.quant_state.bitsandbytes__nf4", DType: dtype.U8, Shape: []int64{10}, Begin: 3, End: 13},
	}
	for _, blob := range []string{`{}`, `{"shape": [2, -1]}`, `{"shape": "x"}`, `not json`, `{"shape": [4294967296, 4294967296]}`, `{"shape": [1], "shape": [2]}`} {
		_, err := LogicalParameters(infos, func(string) ([]byte, error) { return []byte(blob), nil })
		if err == nil || !strings.Contains(err.Error(), "w.weight.quant_state.bitsandbytes__nf4") {
			t.Errorf("quant state %s: err = %v", blob, err)
		}
	}
	// A dense tensor after a packed weight of MaxInt64 elements overflows
	// the total.
	dense := append(slices.Clone(infos), safetensors.TensorInfo{Name: "z.weight", DType: dtype.F32, Shape: []int64{2}, Begin: 13, End: 21})
	if p, err := LogicalParameters(dense, func(string) ([]byte, error) { return []byte(`{"shape": [9223372036854775807]}`), nil }); err == nil || !strings.Contains(err.Error(), "z.weight") {
		t.Errorf("overflowing total: %+v, %v", p, err)
	}
	p, err := LogicalParameters(infos, func(string) ([]byte, error) { return []byte(`{"shape": [5]}`), nil })
	if err != nil || p.Total != 5 || p.Quantized != 5 || p.PackedBytes != 13 {
		t.Errorf("LogicalParameters = %+v, %v", p, err)
	}
	if got := p.BitsPerWeight(); got != 13*8/5.0 {
		t.Errorf("BitsPerWeight = %v", got)
	}
}

func FuzzParseIndex(f *testing.F) {
	b, err := os.ReadFile(filepath.Join(modelsDir, "tiny-llama-f32", IndexFileName))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"metadata": {"total_size": 1.0}, "weight_map": {"a": "../x"}}`))
	f.Add([]byte(`{"weight_map": {"a": "f", "a": "g"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := ParseIndex(data)
		if err != nil {
			if _, ok := err.(*Problem); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		for _, e := range ix.WeightMap {
			if checkFileName(e.File) != "" {
				t.Fatalf("unsafe file name %q accepted", e.File)
			}
		}
		out, err := ix.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		ix2, err := ParseIndex(out)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, out)
		}
		if len(ix2.WeightMap) != len(ix.WeightMap) || ix2.TotalSize != ix.TotalSize || ix2.TotalParameters != ix.TotalParameters {
			t.Fatalf("round trip changed the index")
		}
		for _, e := range ix.WeightMap {
			if f, ok := ix2.FileOf(e.Tensor); !ok || f != e.File {
				t.Fatalf("round trip lost %q", e.Tensor)
			}
		}
	})
}
