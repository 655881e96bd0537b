package audit

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// sarifSchema is the official SARIF 2.1.0 JSON schema (OASIS, errata 01),
// from github.com/oasis-tcs/sarif-spec, sarif-2.1/schema/.
var sarifSchema = filepath.Join("testdata", "sarif", "sarif-schema-2.1.0.json")

// validateSARIF checks log against the official SARIF 2.1.0 schema.
func validateSARIF(t *testing.T, log []byte) {
	t.Helper()
	f, err := os.Open(sarifSchema)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	const url = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
	if err := c.AddResource(url, doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(url)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if err := sch.Validate(inst); err != nil {
		t.Errorf("SARIF output is not valid against the SARIF 2.1.0 schema: %v\n%s", err, log)
	}
}

func TestSARIFSchema(t *testing.T) {
	rep := testReport()
	rep.PathErrors = []error{&PathError{Path: "missing-model", Msg: "no such file or directory"}}
	var b bytes.Buffer
	if err := (SARIFFormatter{Tool: Tool{Name: "qconv", Version: "1.2.3"}}).Format(&b, rep); err != nil {
		t.Fatal(err)
	}
	validateSARIF(t, b.Bytes())

	var log struct {
		Runs []struct {
			Tool struct {
				Driver struct {
					Rules []struct {
						ID      string `json:"id"`
						HelpURI string `json:"helpUri"`
					} `json:"rules"`
				} `json:"driver"`
			} `json:"tool"`
			Invocations []struct {
				ExecutionSuccessful        *bool `json:"executionSuccessful"`
				ToolExecutionNotifications []struct {
					Message struct{ Text string } `json:"message"`
				} `json:"toolExecutionNotifications"`
			} `json:"invocations"`
			Results []struct {
				Locations []struct {
					PhysicalLocation struct {
						Region *struct {
							StartLine int `json:"startLine"`
						} `json:"region"`
					} `json:"physicalLocation"`
				} `json:"locations"`
				PartialFingerprints map[string]string `json:"partialFingerprints"`
			} `json:"results"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(b.Bytes(), &log); err != nil {
		t.Fatal(err)
	}
	run := log.Runs[0]
	if len(run.Invocations) != 1 || run.Invocations[0].ExecutionSuccessful == nil || *run.Invocations[0].ExecutionSuccessful {
		t.Errorf("invocations %+v: want one, executionSuccessful false", run.Invocations)
	} else if n := run.Invocations[0].ToolExecutionNotifications; len(n) != 1 || !strings.Contains(n[0].Message.Text, "missing-model: no such file") {
		t.Errorf("toolExecutionNotifications %+v", n)
	}
	fps := map[string]bool{}
	for i, res := range run.Results {
		if r := res.Locations[0].PhysicalLocation.Region; r == nil || r.StartLine != 1 {
			t.Errorf("result %d: region %+v, want startLine 1", i, r)
		}
		fp := res.PartialFingerprints["qconvFinding/v1"]
		if len(fp) != 32 || fps[fp] {
			t.Errorf("result %d: fingerprint %q missing or repeated", i, fp)
		}
		fps[fp] = true
	}
	for _, r := range run.Tool.Driver.Rules {
		if want := RulesDocURL + "#" + strings.ToLower(r.ID); r.HelpURI != want {
			t.Errorf("rule %s: helpUri %q, want %q", r.ID, r.HelpURI, want)
		}
	}

	// A clean, complete audit is a successful invocation, and still valid.
	b.Reset()
	if err := (SARIFFormatter{Tool: Tool{Name: "qconv", Version: "dev"}}).Format(&b, &Report{}); err != nil {
		t.Fatal(err)
	}
	validateSARIF(t, b.Bytes())
	if !strings.Contains(b.String(), `"executionSuccessful": true`) {
		t.Errorf("clean report:\n%s", b.String())
	}
}

// The schema check itself can fail: a log without "version" is refused.
func TestSARIFSchemaRejects(t *testing.T) {
	f, err := os.Open(sarifSchema)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("sarif.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("sarif.json")
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]any{"runs": []any{map[string]any{"tool": map[string]any{"driver": map[string]any{"name": "x"}}, "results": []any{
		map[string]any{"message": map[string]any{"text": "m"}, "locations": []any{map[string]any{"physicalLocation": map[string]any{"region": map[string]any{"startLine": 0}}}}},
	}}}}
	if err := sch.Validate(bad); err == nil {
		t.Error("a log without version and with startLine 0 passed the schema")
	}
}

// A finding about a tensor of an index points at the line of its
// weight_map entry; findings about no tensor, or about files without
// lines, at line 1.
func TestSARIFRegionLines(t *testing.T) {
	dir := t.TempDir()
	index := filepath.Join(dir, "model.safetensors.index.json")
	os.WriteFile(index, []byte("{\n  \"metadata\": {\"total_size\": 8},\n  \"weight_map\": {\n    \"a.weight\": \"model-00001-of-00002.safetensors\",\n    \"b.weight\":\n      \"model-00002-of-00002.safetensors\"\n  }\n}\n"), 0o644)
	k := &keyLines{files: map[string][]byte{}}
	for _, c := range []struct {
		file, tensor string
		line         int
	}{
		{index, "a.weight", 4},
		{index, "b.weight", 5},
		{index, "model-00001-of-00002.safetensors", 1}, // a value, not a key
		{index, "c.weight", 1},
		{index, "", 1},
		{filepath.Join(dir, "model.safetensors"), "a.weight", 1},
		{filepath.Join(dir, "missing.json"), "a.weight", 1},
	} {
		if got := k.line(c.file, c.tensor); got != c.line {
			t.Errorf("line(%s, %q) = %d, want %d", filepath.Base(c.file), c.tensor, got, c.line)
		}
	}
}
