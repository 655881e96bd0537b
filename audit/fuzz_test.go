package audit_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/audit/rules"
)

// FuzzAudit runs every rule, deep ones included, on a directory holding
// one fuzzed model.safetensors and one fuzzed config.json. Malformed input
// must become findings: no panic (a panicking rule is reported as an
// "internal error" finding, which fails the fuzz target), no path error.
func FuzzAudit(f *testing.F) {
	for _, m := range []string{"tiny-llama-b-f32-fp4-u8-f16", "tiny-llama-bf16-nf4-dq-f32storage"} {
		model, err := os.ReadFile(filepath.Join(models, m, "model.safetensors"))
		if err != nil {
			f.Fatal(err)
		}
		config, err := os.ReadFile(filepath.Join(models, m, "config.json"))
		if err != nil {
			f.Fatal(err)
		}
		// Keep the header and the start of the data: fuzzing 300 KB inputs
		// is slow, and ST018 findings are as good as any.
		f.Add(model[:min(len(model), 16<<10)], config)
	}
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"), []byte(`{"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true}}`))
	f.Add([]byte("\x4a\x00\x00\x00\x00\x00\x00\x00"+`{"w.quant_state.bitsandbytes__nf4":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`+"{}"), []byte(`{}`))
	// Issue 14: a rank of 65, a duplicate name.
	for _, h := range []string{`{"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}`, `{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`} {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
		f.Add(append(append(b, h...), 0, 0), []byte(`{}`))
	}
	rs := rules.All()
	f.Fuzz(func(t *testing.T, model, config []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "model.safetensors"), model, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), config, 0o644); err != nil {
			t.Fatal(err)
		}
		rep, err := audit.Run([]string{dir}, audit.Options{Rules: rs, Deep: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.PathErrors) > 0 {
			t.Fatalf("path errors: %v", rep.PathErrors)
		}
		for _, d := range rep.Findings {
			if strings.Contains(d.Message, "internal error") {
				t.Fatalf("rule panicked: %s", d.Message)
			}
			if d.Rule == "" || d.Message == "" || d.File == "" {
				t.Fatalf("incomplete finding %+v", d)
			}
		}
	})
}
