package rules

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
)

var update = flag.Bool("update", false, "rewrite docs/audit-rules.md")

const docsPath = "../../docs/audit-rules.md"

// TestDocs checks that docs/audit-rules.md is what the rule values
// generate (go test -run TestDocs -update rewrites it).
func TestDocs(t *testing.T) {
	var b bytes.Buffer
	if err := audit.WriteMarkdown(&b, All()); err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.MkdirAll("../../docs", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(docsPath, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatalf("%v (go test ./audit/rules -run TestDocs -update creates it)", err)
	}
	if !bytes.Equal(got, b.Bytes()) {
		t.Errorf("%s is out of date: go test ./audit/rules -run TestDocs -update", docsPath)
	}
}

var idPattern = regexp.MustCompile(`^(ST|IX|BNB|ARCH|CFG|NAME|LORA|DEEP)[0-9]{3}$`)

// TestRuleValues checks the rules' documentation and metadata.
func TestRuleValues(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range All() {
		if !idPattern.MatchString(r.ID) {
			t.Errorf("%s: ID does not match %s", r.ID, idPattern)
		}
		if seen[r.ID] {
			t.Errorf("%s: duplicate ID", r.ID)
		}
		seen[r.ID] = true
		if r.Title == "" || strings.HasSuffix(r.Title, ".") || strings.Contains(r.Title, "\n") {
			t.Errorf("%s: title %q must be one line without a final period", r.ID, r.Title)
		}
		if len(r.Doc) < 150 || !strings.Contains(r.Doc, "Fix") {
			t.Errorf("%s: doc too short or says nothing about the fix", r.ID)
		}
		if r.Severity < audit.Info || r.Severity > audit.Error || r.Run == nil {
			t.Errorf("%s: bad severity or no Run", r.ID)
		}
		if r.Deep != (audit.GroupPrefix(r.ID) == "DEEP") {
			t.Errorf("%s: Deep is %v", r.ID, r.Deep)
		}
	}
}

// Each rule's SARIF helpUri points at an anchor that docs/audit-rules.md
// has: GitHub makes the heading "### ST002" the anchor "#st002".
func TestHelpURIAnchors(t *testing.T) {
	doc, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range All() {
		uri := audit.RuleHelpURI(r.ID)
		base, anchor, ok := strings.Cut(uri, "#")
		if !ok || base != audit.RulesDocURL || !strings.HasSuffix(base, "/"+filepath.ToSlash(strings.TrimPrefix(docsPath, "../../"))) {
			t.Errorf("%s: helpUri %q is not an anchor of %s", r.ID, uri, docsPath)
			continue
		}
		if heading := "\n### " + r.ID + "\n"; anchor != strings.ToLower(r.ID) || !bytes.Contains(doc, []byte(heading)) {
			t.Errorf("%s: anchor #%s has no heading %q in %s", r.ID, anchor, strings.TrimSpace(heading), docsPath)
		}
	}
}
