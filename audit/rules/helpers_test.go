package rules

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// tensorFix is one tensor of a fixture file. Nil Data means zeros of the
// size the dtype and shape need.
type tensorFix struct {
	Name  string
	DType dtype.DType
	Shape []int64
	Data  []byte
}

// pt is the metadata transformers writes.
var pt = map[string]string{"format": "pt"}

// writeST writes a valid safetensors file with the reference layout.
func writeST(t testing.TB, path string, meta map[string]string, ts []tensorFix) {
	t.Helper()
	specs := make([]safetensors.TensorSpec, len(ts))
	data := map[string][]byte{}
	for i, x := range ts {
		specs[i] = safetensors.TensorSpec{Name: x.Name, DType: x.DType, Shape: x.Shape}
		data[x.Name] = x.Data
	}
	plan, err := safetensors.NewPlan(meta, specs)
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
		if int64(len(d)) != ti.Size() {
			t.Fatalf("fixture tensor %s: %d bytes of data, want %d", ti.Name, len(d), ti.Size())
		}
		if _, err := w.Write(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, buf.Bytes())
}

// rawST writes an 8-byte length prefix, header and data, with no checks.
func rawST(t testing.TB, path, header string, data []byte) {
	t.Helper()
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	writeFile(t, path, append(b, data...))
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, b)
}

// ruleCase is one fixture: build writes it under dir and returns the path
// to audit; want lists every finding expected, as "RULE" or "RULE tensor".
// Cases with lookalike set are the harmless twins of rule's positive case:
// they must not report rule (want says what they do report, usually
// nothing).
type ruleCase struct {
	rule      string
	name      string
	lookalike bool
	deep      bool
	build     func(t *testing.T, dir string) string
	want      []string
}

// runCases runs every rule on each fixture and fails on findings that are
// missing and on findings that were not expected.
func runCases(t *testing.T, cases []ruleCase) {
	t.Helper()
	for _, c := range cases {
		kind := "positive"
		if c.lookalike {
			kind = "lookalike"
		}
		t.Run(c.rule+"/"+kind+"/"+c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := c.build(t, dir)
			rep, err := audit.Run([]string{path}, audit.Options{Rules: All(), Deep: c.deep})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range rep.PathErrors {
				t.Fatalf("path error: %v", e)
			}
			var got []string
			for _, d := range rep.Findings {
				s := d.Rule
				if d.Tensor != "" {
					s += " " + d.Tensor
				}
				got = append(got, s)
			}
			want := slices.Clone(c.want)
			sort.Strings(got)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				var b strings.Builder
				for _, d := range rep.Findings {
					fmt.Fprintf(&b, "\n  %s %s [%s] %s: %s", d.Rule, d.Severity, d.Tensor, filepath.Base(d.File), d.Message)
				}
				t.Errorf("findings %q, want %q%s", got, want, b.String())
			}
			if c.lookalike && slices.Contains(want, c.rule) {
				t.Errorf("bad test: lookalike of %s expects it", c.rule)
			}
			for _, d := range rep.Findings {
				if d.Message == "" || d.File == "" {
					t.Errorf("finding %+v has no message or file", d)
				}
			}
		})
	}
}

// checkCoverage fails unless every rule with one of the prefixes has a
// positive case and a look-alike in cases.
func checkCoverage(t *testing.T, cases []ruleCase, prefixes ...string) {
	t.Helper()
	pos, look := map[string]bool{}, map[string]bool{}
	for _, c := range cases {
		if c.lookalike {
			look[c.rule] = true
		} else if slices.ContainsFunc(c.want, func(w string) bool { return strings.Fields(w)[0] == c.rule }) {
			pos[c.rule] = true
		}
	}
	for _, r := range All() {
		if !slices.Contains(prefixes, audit.GroupPrefix(r.ID)) {
			continue
		}
		if !pos[r.ID] {
			t.Errorf("rule %s has no fixture that triggers it", r.ID)
		}
		if !look[r.ID] {
			t.Errorf("rule %s has no look-alike fixture", r.ID)
		}
	}
}

// one returns a build function writing a single file with a raw header.
func raw(header string, data []byte) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "model.safetensors")
		rawST(t, p, header, data)
		return p
	}
}

// file returns a build function writing one valid file.
func file(meta map[string]string, ts ...tensorFix) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "model.safetensors")
		writeST(t, p, meta, ts)
		return p
	}
}
