package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func testReport() *Report {
	r := &Report{
		Rules: []*Rule{{ID: "BNB001", Title: "packed weight as f32", Doc: "Line one\nwraps.\n\nFix: this.", Severity: Error}},
		Findings: []Diagnostic{
			{Rule: "BNB001", Severity: Error, File: "dir,1/a:b%.safetensors", Tensor: "w\nx", Message: "bad\nthing 100%"},
			{Rule: "CFG008", Severity: Info, File: "/abs/path with space/config.json", Message: "note"},
			{Rule: "IX007", Severity: Warning, File: "i.json", Message: "warn"},
		},
	}
	for _, d := range r.Findings {
		r.Counts.add(d.Severity)
	}
	return r
}

func format(t *testing.T, name string) string {
	t.Helper()
	f, err := NewFormatter(name, Tool{Name: "qconv", Version: "1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := f.Format(&b, testReport()); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestTextFormat(t *testing.T) {
	got := format(t, "text")
	// A name with a newline (or any control character) is quoted as %q.
	want := "dir,1/a:b%.safetensors: \"w\\nx\": error BNB001: bad thing 100%\n" +
		"/abs/path with space/config.json: info CFG008: note\n" +
		"i.json: warning IX007: warn\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestGitHubFormat(t *testing.T) {
	got := format(t, "github")
	want := "::error file=dir%2C1/a%3Ab%25.safetensors,title=BNB001::w%0Ax: bad%0Athing 100%25\n" +
		"::notice file=/abs/path with space/config.json,title=CFG008::note\n" +
		"::warning file=i.json,title=IX007::warn\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestJSONFormat(t *testing.T) {
	var out map[string]any
	if err := json.Unmarshal([]byte(format(t, "json")), &out); err != nil {
		t.Fatal(err)
	}
	counts := out["counts"].(map[string]any)
	if out["schema_version"].(float64) != 1 || counts["error"].(float64) != 1 || counts["warning"].(float64) != 1 || counts["info"].(float64) != 1 {
		t.Errorf("bad report %v", out)
	}
	f := out["findings"].([]any)[1].(map[string]any)
	if f["tensor"] != "" || f["severity"] != "info" || f["rule"] != "CFG008" {
		t.Errorf("bad finding %v", f)
	}
	// An empty report has "findings": [], not null.
	var b bytes.Buffer
	if err := (JSONFormatter{}).Format(&b, &Report{}); err != nil || !strings.Contains(b.String(), `"findings": []`) {
		t.Errorf("empty report: %s %v", b.String(), err)
	}
}

func TestSARIFFormat(t *testing.T) {
	s := format(t, "sarif")
	for _, want := range []string{
		`"version": "2.1.0"`,
		`"uri": "dir,1/a:b%25.safetensors"`,
		`"uri": "file:///abs/path%20with%20space/config.json"`,
		`"level": "note"`,
		`"ruleIndex": -1`, // CFG008 did not run in this report
		`"text": "Line one wraps.\n\nFix: this."`,
		`"name": "PackedWeightAsF32"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("SARIF output lacks %s:\n%s", want, s)
		}
	}
}

func TestSeverity(t *testing.T) {
	for _, s := range []Severity{Info, Warning, Error} {
		if p, ok := ParseSeverity(strings.ToUpper(s.String())); !ok || p != s {
			t.Errorf("ParseSeverity(%s) = %v, %v", s, p, ok)
		}
	}
	if _, ok := ParseSeverity("never"); ok {
		t.Error("never is not a severity")
	}
	c := Counts{Error: 1, Warning: 2, Info: 4}
	if c.AtLeast(Error) != 1 || c.AtLeast(Warning) != 3 || c.AtLeast(Info) != 7 {
		t.Errorf("AtLeast wrong for %+v", c)
	}
}

// TestRunSortsAndRecovers checks the driver: findings sorted and
// de-duplicated, disabled and deep rules skipped, a panicking rule turned
// into a finding.
func TestRunSortsAndRecovers(t *testing.T) {
	rep := func(opts Options) *Report {
		r, err := Run([]string{"../testdata/golden/models/tiny-llama-bf16"}, opts)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	noisy := &Rule{ID: "X001", Severity: Warning, Run: func(p *Pass) {
		p.Reportf("b", "t", "m")
		p.Reportf("a", "t", "m")
		p.Reportf("b", "t", "m")
	}}
	deep := &Rule{ID: "DEEP999", Severity: Error, Deep: true, Run: func(p *Pass) { p.Reportf("c", "", "deep") }}
	boom := &Rule{ID: "X002", Severity: Info, Run: func(p *Pass) { panic("boom") }}
	r := rep(Options{Rules: []*Rule{noisy, deep, boom}})
	if len(r.Findings) != 3 || r.Findings[1].File != "a" || r.Findings[2].File != "b" || r.Findings[0].Rule != "X002" ||
		r.Findings[0].Severity != Error || !strings.Contains(r.Findings[0].Message, "internal error") {
		t.Errorf("findings %+v", r.Findings)
	}
	if r := rep(Options{Rules: []*Rule{noisy, deep}, Deep: true, Disable: []string{"x001"}}); len(r.Findings) != 1 || r.Findings[0].Rule != "DEEP999" {
		t.Errorf("deep/disable: %+v", r.Findings)
	}
	if _, err := Run(nil, Options{Rules: []*Rule{noisy}, Disable: []string{"X003"}}); err == nil {
		t.Error("unknown disabled rule accepted")
	}
}
