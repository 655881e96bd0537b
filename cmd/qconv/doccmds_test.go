package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docsWithCommands are the documents whose marked blocks TestDocCommands
// checks, relative to the repository root.
var docsWithCommands = []string{"README.md", "docs/ci.md"}

// commandStarts are the commands TestDocCommands holds to their scripts;
// other lines of a marked block (installation steps, YAML keys) are not
// checked.
var commandStarts = []string{"qconv ", "pre-commit ", "sbatch ", "jid=$(sbatch ", "make "}

var (
	testMarker    = regexp.MustCompile(`^\s*<!-- test: (\S+) -->\s*$`)
	trailingNote  = regexp.MustCompile(`\s+#\s.*$`)
	yamlListOrRun = regexp.MustCompile(`^(-\s+)?((run|script):\s+)?(-\s+)?`)
)

// TestDocCommands keeps documented commands from rotting: a fenced block
// right after a "<!-- test: PATH -->" line in README.md or docs/ci.md is
// run by the script PATH, so each command in it (a line that, without
// indentation, YAML "- "/"run: "/"script: " prefixes and a trailing
// "  # note", starts with qconv, pre-commit, sbatch or make) must appear
// verbatim in PATH, and .ci/run must run PATH.
func TestDocCommands(t *testing.T) {
	root := filepath.Join("..", "..")
	ci, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, doc := range docsWithCommands {
		data, err := os.ReadFile(filepath.Join(root, doc))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(data), "\n")
		for i := 0; i < len(lines); i++ {
			m := testMarker.FindStringSubmatch(lines[i])
			if m == nil {
				continue
			}
			script := m[1]
			body, err := os.ReadFile(filepath.Join(root, script))
			if err != nil {
				t.Errorf("%s:%d: marker names %s: %v", doc, i+1, script, err)
				continue
			}
			if !strings.Contains(string(ci), script) {
				t.Errorf("%s:%d: .ci/run does not run %s", doc, i+1, script)
			}
			if i+1 >= len(lines) || !strings.HasPrefix(strings.TrimSpace(lines[i+1]), "```") {
				t.Errorf("%s:%d: a test marker must be followed by a fenced block", doc, i+1)
				continue
			}
			for i += 2; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
				cmd := strings.TrimSpace(trailingNote.ReplaceAllString(lines[i], ""))
				cmd = yamlListOrRun.ReplaceAllString(cmd, "")
				if !isCommand(cmd) {
					continue
				}
				checked++
				if !strings.Contains(string(body), cmd) {
					t.Errorf("%s:%d: %q is not in %s, so no test runs it: change the two together", doc, i+1, cmd, script)
				}
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d documented commands checked; markers lost?", checked)
	}
}

func isCommand(s string) bool {
	for _, p := range commandStarts {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
