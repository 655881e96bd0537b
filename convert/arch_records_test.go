package convert

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/pyjson"
)

// A record is what scripts/archgen/gen_arch.py observed transformers +
// bitsandbytes do with one tiny model.
type record struct {
	Class       string                             `json:"class"`
	ModelType   string                             `json:"model_type"`
	Status      string                             `json:"status"`
	SrcTensors  map[string]recTensor               `json:"src_tensors"`
	OutTensors  map[string]recTensor               `json:"out_tensors"`
	QuantStates map[string]struct{ Shape []int64 } `json:"quant_states"`
	ConfigSrc   json.RawMessage                    `json:"config_src"`
	ConfigOut   json.RawMessage                    `json:"config_out"`
}

type recTensor struct {
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
}

func readRecords(t *testing.T, path string) []record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(z)
	var out []record
	for first := true; dec.More(); first = false {
		var r record
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !first && r.Status == "ok" {
			out = append(out, r)
		}
	}
	return out
}

// TestArchRecords plans the conversion of every model the generator built
// (three sets: 2 layers / hidden 64, 4 layers / hidden 128 and 6 layers /
// hidden 192 with 8 experts, other seeds) from its tensor headers and config.json alone, and checks the
// plan against what transformers + bitsandbytes did: the quantized set, the
// quant-state (logical) shapes, the dtype of every kept tensor, and the
// whole config.json. Architectures the table refuses must be refused.
func TestArchRecords(t *testing.T) {
	var recs []record
	for _, f := range []string{"arch-records.jsonl.gz", "arch-records-wide.jsonl.gz", "arch-records-deep.jsonl.gz"} {
		recs = append(recs, readRecords(t, filepath.Join(archRefs, f))...)
	}
	if len(recs) < 1100 {
		t.Fatalf("%d records", len(recs))
	}
	if extra := os.Getenv("QCONV_ARCH_RECORDS"); extra != "" {
		// Records of models the table was not made from (a new
		// gen_arch.py run): how well the table generalizes.
		recs = readRecords(t, extra)
	}
	s, err := (&Options{}).settings()
	if err != nil {
		t.Fatal(err)
	}
	var planned, refused int
	for _, r := range recs {
		cfg, err := pyjson.Parse(r.ConfigSrc)
		if err != nil {
			t.Fatalf("%s: config: %v", r.Class, err)
		}
		var tensors []srcTensor
		for name, ti := range r.SrcTensors {
			d, ok := dtype.Parse(ti.DType)
			if !ok {
				t.Fatalf("%s: %s: dtype %q", r.Class, name, ti.DType)
			}
			tensors = append(tensors, srcTensor{TensorInfo: &safetensors.TensorInfo{Name: name, DType: d, Shape: ti.Shape}})
		}
		p, err := newPlan(s, tensors, []string{"model.safetensors"}, cfg)
		wantRefuse := len(r.QuantStates) == 0
		for name := range r.SrcTensors {
			if _, ok := r.OutTensors[name]; !ok {
				wantRefuse = true // transformers renamed tensors on load
			}
		}
		if wantRefuse {
			if err == nil {
				t.Errorf("%s (%s): planned, but transformers quantized nothing or renamed tensors", r.Class, r.ModelType)
			}
			refused++
			continue
		}
		if err != nil {
			t.Errorf("%s (%s): %v", r.Class, r.ModelType, err)
			continue
		}
		planned++
		for _, it := range p.items {
			name := it.src.Name
			qs, wantQ := r.QuantStates[name]
			if it.quantize != wantQ {
				t.Errorf("%s (%s): %s: quantize %v, transformers %v (reason %s)", r.Class, r.ModelType, name, it.quantize, wantQ, it.reason)
				continue
			}
			if wantQ {
				if got := it.logicalShape(); !slices.Equal(got, qs.Shape) {
					t.Errorf("%s: %s: quant-state shape %v, transformers %v", r.Class, name, got, qs.Shape)
				}
				continue
			}
			if got, want := it.dtype.String(), r.OutTensors[name].DType; got != want {
				t.Errorf("%s (%s): kept %s: dtype %s, transformers %s", r.Class, r.ModelType, name, got, want)
			}
		}
		var got, want any
		if err := json.Unmarshal(p.ConfigJSON(cfg), &got); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(r.ConfigOut, &want); err != nil {
			t.Fatal(err)
		}
		delete(got.(map[string]any), "transformers_version")
		delete(want.(map[string]any), "transformers_version")
		if !reflect.DeepEqual(got, want) {
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(want)
			t.Errorf("%s (%s): config.json differs:\n got %s\nwant %s", r.Class, r.ModelType, firstDiff(gb, wb), firstDiff(wb, gb))
		}
	}
	t.Logf("%d models planned exactly as transformers converted them, %d refused", planned, refused)
}

// firstDiff returns a stretch of a around its first difference from b.
func firstDiff(a, b []byte) []byte {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	lo := max(0, i-60)
	return bytes.Clone(a[lo:min(len(a), i+60)])
}
