package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/audit/rules"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// writeTensors writes a safetensors file with the reference layout.
func writeTensors(t *testing.T, path string, specs []safetensors.TensorSpec, data map[string][]byte) {
	t.Helper()
	plan, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := safetensors.NewWriter(&buf, plan)
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range plan.Tensors {
		d := data[ti.Name]
		if d == nil {
			d = make([]byte, ti.Size())
		}
		if _, err := w.Write(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// mixedFixture writes the directory "mixed" under dir: a 4-bit
// checkpoint with a float32-stored packed weight whose config says uint8
// (the silent-corruption case), an F32 lm_head in a bfloat16 model, and a
// second file with a broken header whose tensor name needs escaping.
func mixedFixture(t *testing.T, dir string) {
	t.Helper()
	m := filepath.Join(dir, "mixed")
	if err := os.MkdirAll(m, 0o755); err != nil {
		t.Fatal(err)
	}
	const w = "model.layers.0.mlp.down_proj.weight"
	state := bnb.QuantState{QuantType: bnb.NF4, Blocksize: 64, DType: "bfloat16", Shape: []int64{4, 4}}.MarshalPython()
	book := bnb.CodeBook(bnb.NF4)
	var qm []byte
	for _, v := range book {
		qm = binary.LittleEndian.AppendUint32(qm, math.Float32bits(v))
	}
	writeTensors(t, filepath.Join(m, "model.safetensors"), []safetensors.TensorSpec{
		{Name: "lm_head.weight", DType: dtype.F32, Shape: []int64{4, 2}},
		{Name: "model.norm.weight", DType: dtype.BF16, Shape: []int64{2}},
		{Name: w, DType: dtype.F32, Shape: []int64{2, 1}},
		{Name: w + ".absmax", DType: dtype.F32, Shape: []int64{1}},
		{Name: w + ".quant_map", DType: dtype.F32, Shape: []int64{16}},
		{Name: w + ".quant_state.bitsandbytes__nf4", DType: dtype.U8, Shape: []int64{int64(len(state))}},
	}, map[string][]byte{w + ".quant_map": qm, w + ".quant_state.bitsandbytes__nf4": state})
	config := `{
  "dtype": "bfloat16",
  "quantization_config": {
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_quant_storage": "uint8",
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": false,
    "load_in_4bit": true,
    "quant_method": "bitsandbytes"
  }
}
`
	if err := os.WriteFile(filepath.Join(m, "config.json"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	header := `{"a,b:c%d":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(append(b, header...), 0, 0, 0, 0)
	if err := os.WriteFile(filepath.Join(m, "broken.safetensors"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestAuditOutputGolden checks the text, JSON, SARIF and GitHub output
// for two fixtures against testdata/audit (go test -update rewrites it).
func TestAuditOutputGolden(t *testing.T) {
	pkg, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mixedFixture(t, dir)
	// The f32-storage model, copied so that paths in the output are short.
	src := filepath.Join(models, "tiny-llama-b-f32-nf4-dq-f32storage")
	dst := filepath.Join(dir, "f32storage")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	for _, fixture := range []string{"mixed", "f32storage"} {
		for _, format := range []string{"text", "json", "sarif", "github"} {
			ext := map[string]string{"text": "txt", "json": "json", "sarif": "sarif", "github": "github.txt"}[format]
			name := "audit/" + fixture + "." + ext
			t.Run(name, func(t *testing.T) {
				code, stdout, stderr := qconv("audit", "--format", format, fixture)
				if code != exitFindings {
					t.Errorf("exit code %d, want 1; stderr: %s", code, stderr)
				}
				// checkGolden reads testdata relative to the package.
				t.Chdir(pkg)
				checkGolden(t, name, []byte(stdout))
			})
			t.Chdir(dir)
		}
	}
}

func TestAuditJSONShape(t *testing.T) {
	code, stdout, _ := qconv("audit", "--format", "json", filepath.Join(models, "tiny-llama-bf16-nf4-dq-f32storage"))
	if code != exitFindings {
		t.Fatalf("exit code %d", code)
	}
	var out struct {
		SchemaVersion int `json:"schema_version"`
		Tool          struct{ Name, Version string }
		Findings      []struct{ Rule, Severity, File, Tensor, Message string }
		Counts        map[string]int
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatal(err)
	}
	if out.SchemaVersion != 1 || out.Tool.Name != "qconv" || out.Tool.Version == "" || len(out.Findings) != 14 ||
		out.Counts["error"] != 14 || out.Counts["warning"] != 0 || out.Counts["info"] != 0 {
		t.Errorf("unexpected JSON report: %+v", out)
	}
	for _, f := range out.Findings {
		if f.Rule != "BNB001" || f.Severity != "error" || f.Tensor == "" || !strings.HasSuffix(f.File, "model.safetensors") {
			t.Errorf("unexpected finding %+v", f)
		}
	}
}

func TestAuditSARIF(t *testing.T) {
	_, stdout, _ := qconv("audit", "--format", "sarif", filepath.Join(models, "tiny-llama-bf16-nf4-dq-bf16storage"))
	var log struct {
		Version string
		Runs    []struct {
			Tool struct {
				Driver struct {
					Name  string
					Rules []struct {
						ID                   string
						ShortDescription     struct{ Text string }
						FullDescription      struct{ Text string }
						DefaultConfiguration struct{ Level string }
					}
				}
			}
			Results []struct {
				RuleID    string
				RuleIndex int
				Level     string
				Locations []struct {
					PhysicalLocation struct{ ArtifactLocation struct{ URI string } }
					LogicalLocations []struct{ Name string }
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(stdout), &log); err != nil {
		t.Fatal(err)
	}
	if log.Version != "2.1.0" || len(log.Runs) != 1 {
		t.Fatalf("version %q, %d runs", log.Version, len(log.Runs))
	}
	run := log.Runs[0]
	if len(run.Tool.Driver.Rules) == 0 || len(run.Results) != 14 {
		t.Fatalf("%d rules, %d results", len(run.Tool.Driver.Rules), len(run.Results))
	}
	for _, r := range run.Results {
		rule := run.Tool.Driver.Rules[r.RuleIndex]
		if rule.ID != r.RuleID || r.RuleID != "BNB002" || r.Level != "warning" || rule.DefaultConfiguration.Level != "warning" ||
			rule.FullDescription.Text == "" || len(r.Locations) != 1 || len(r.Locations[0].LogicalLocations) != 1 ||
			!strings.HasSuffix(r.Locations[0].PhysicalLocation.ArtifactLocation.URI, "/model.safetensors") {
			t.Errorf("unexpected result %+v (rule %+v)", r, rule)
		}
	}
}

func TestAuditExitCodes(t *testing.T) {
	u8 := filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8")
	f32 := filepath.Join(models, "tiny-llama-bf16-nf4-dq-f32storage")
	bf16 := filepath.Join(models, "tiny-llama-bf16-nf4-dq-bf16storage")
	empty := t.TempDir()
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"audit", u8}, exitOK},
		{[]string{"audit", "--deep", u8, filepath.Join(models, "tiny-llama-f32"), filepath.Join(models, "tiny-llama-bf16")}, exitOK},
		{[]string{"audit", f32}, exitFindings},
		{[]string{"audit", u8, f32}, exitFindings},
		{[]string{"audit", f32, "--fail-on", "never"}, exitOK},
		{[]string{"audit", "--disable", "BNB001", f32}, exitOK},
		{[]string{"audit", "--disable", "bnb002,ST001", bf16, "--fail-on", "info"}, exitOK},
		{[]string{"audit", bf16}, exitOK},
		{[]string{"audit", "--fail-on", "warning", bf16}, exitFindings},
		{[]string{"audit", filepath.Join(empty, "missing")}, exitError},
		{[]string{"audit", empty}, exitError},
		{[]string{"audit", u8, empty}, exitError},
		{[]string{"audit"}, exitError},
		{[]string{"audit", "--format", "xml", u8}, exitError},
		{[]string{"audit", "--fail-on", "fatal", u8}, exitError},
		{[]string{"audit", "--disable", "XX999", u8}, exitError},
		{[]string{"audit", "--explain", "XX999"}, exitError},
		{[]string{"audit", "--explain", "cfg011"}, exitOK},
		{[]string{"audit", "--list-rules"}, exitOK},
		{[]string{"audit", "--list-rules", "--format", "json"}, exitOK},
		{[]string{"audit", "--help"}, exitOK},
		{[]string{"audit", "--fix", filepath.Join(empty, "x"), u8, f32}, exitError},
	} {
		code, _, stderr := qconv(c.args...)
		if code != c.want {
			t.Errorf("%v: exit code %d, want %d; stderr: %s", c.args, code, c.want, stderr)
		}
	}
}

func TestAuditListAndExplain(t *testing.T) {
	_, list, _ := qconv("audit", "--list-rules")
	for _, r := range rules.All() {
		if !strings.Contains(list, r.ID+" ") || !strings.Contains(list, r.Title) {
			t.Errorf("--list-rules lacks %s", r.ID)
		}
		_, doc, _ := qconv("audit", "--explain", r.ID)
		if doc != audit.Explain(r) {
			t.Errorf("--explain %s is not the rule's documentation", r.ID)
		}
	}
}

func TestAuditFixCommand(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "fixed")
	code, stdout, stderr := qconv("audit", "--fix", dst, filepath.Join(models, "tiny-llama-b-f32-nf4-dq-f32storage"))
	if code != exitOK || stdout != "" {
		t.Fatalf("exit code %d, stdout %q, stderr %s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, `bnb_4bit_quant_storage "float32" -> "uint8"`) || strings.Count(stderr, "retyped ") != 14 {
		t.Errorf("stderr does not report the repair:\n%s", stderr)
	}
	for _, name := range []string{"model.safetensors", "config.json"} {
		got, _ := os.ReadFile(filepath.Join(dst, name))
		want, _ := os.ReadFile(filepath.Join(models, "tiny-llama-b-f32-nf4-dq-u8", name))
		if len(want) == 0 || !bytes.Equal(got, want) {
			t.Errorf("%s is not byte-identical to the uint8 golden", name)
		}
	}
	// The output exists now: a second fix refuses to overwrite it.
	if code, _, _ := qconv("audit", "--fix", dst, filepath.Join(models, "tiny-llama-b-f32-nf4-dq-f32storage")); code != exitError {
		t.Errorf("fix into an existing directory: exit code %d, want 2", code)
	}
	// --force replaces it.
	if code, _, stderr := qconv("audit", "--fix", dst, "--force", filepath.Join(models, "tiny-llama-b-f32-nf4-dq-f32storage")); code != exitOK {
		t.Errorf("fix --force into an existing directory: exit code %d, want 0: %s", code, stderr)
	}
	if code, _, stderr := qconv("audit", "--force", filepath.Join(models, "tiny-llama-b-f32-nf4-dq-u8")); code != exitError || !strings.Contains(stderr, "--force goes with --fix") {
		t.Errorf("--force without --fix: exit %d, %s", code, stderr)
	}
	// Nothing to fix: exit 0, and DST is an unchanged copy, so that the
	// next step of a pipeline finds it; a rerun with --force works too.
	clean := filepath.Join(models, "tiny-llama-b-f32-nf4-dq-u8")
	dst2 := filepath.Join(t.TempDir(), "none")
	for _, args := range [][]string{{"audit", "--fix", dst2, clean}, {"audit", "--fix", dst2, "--force", clean}} {
		if code, _, stderr := qconv(args...); code != exitOK || !strings.Contains(stderr, "nothing to fix in "+clean+"") || !strings.Contains(stderr, "wrote an unchanged copy to "+dst2) {
			t.Errorf("qconv %q: exit %d, %s", args, code, stderr)
		}
		for _, name := range []string{"model.safetensors", "config.json"} {
			got, _ := os.ReadFile(filepath.Join(dst2, name))
			want, _ := os.ReadFile(filepath.Join(clean, name))
			if len(want) == 0 || !bytes.Equal(got, want) {
				t.Errorf("unchanged copy: %s differs from the input", name)
			}
		}
	}
}
