package audit

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestGitLabFormat checks the fields GitLab requires of a Code Quality
// issue (description, check_name, fingerprint, severity, location.path,
// location.lines.begin) and GitLab's severity names.
func TestGitLabFormat(t *testing.T) {
	out := format(t, "gitlab")
	var issues []map[string]any
	if err := json.Unmarshal([]byte(out), &issues); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, out)
	}
	if len(issues) != 3 {
		t.Fatalf("%d issues, want 3", len(issues))
	}
	want := []struct{ check, severity, path, desc string }{
		{"BNB001", "critical", "dir,1/a:b%.safetensors", "BNB001: w\nx: bad\nthing 100%"},
		{"CFG008", "info", "/abs/path with space/config.json", "CFG008: note"},
		{"IX007", "minor", "i.json", "IX007: warn"},
	}
	seen := map[string]bool{}
	for i, is := range issues {
		w := want[i]
		loc, _ := is["location"].(map[string]any)
		lines, _ := loc["lines"].(map[string]any)
		if is["check_name"] != w.check || is["severity"] != w.severity || loc["path"] != w.path || lines["begin"] != 1.0 || is["description"] != w.desc {
			t.Errorf("issue %d = %v, want check_name %s, severity %s, path %q, lines.begin 1, description %q", i, is, w.check, w.severity, w.path, w.desc)
		}
		fp, _ := is["fingerprint"].(string)
		if len(fp) != 64 || strings.Trim(fp, "0123456789abcdef") != "" || seen[fp] {
			t.Errorf("issue %d: fingerprint %q is not a unique SHA-256 hex string", i, fp)
		}
		seen[fp] = true
	}
	if again := format(t, "gitlab"); again != out {
		t.Error("fingerprints or order change from run to run")
	}

	f, _ := NewFormatter("gitlab", Tool{})
	var b strings.Builder
	if err := f.Format(&b, &Report{}); err != nil || strings.TrimSpace(b.String()) != "[]" {
		t.Errorf("clean report: %q, %v; want []", b.String(), err)
	}
}
