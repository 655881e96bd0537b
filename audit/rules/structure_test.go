package rules

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

const f32x2 = `"dtype":"F32","shape":[2],"data_offsets":`

var structureCases = []ruleCase{
	{rule: "ST001", name: "4-byte-file", want: []string{"ST001"},
		build: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "model.safetensors")
			writeFile(t, p, []byte{1, 2, 3, 4})
			return p
		}},
	{rule: "ST001", name: "empty-header-file", lookalike: true, build: raw(`{}`, nil)},
	{rule: "ST002", name: "length-200MB", want: []string{"ST002"},
		build: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "model.safetensors")
			b := binary.LittleEndian.AppendUint64(nil, 200_000_000)
			writeFile(t, p, append(b, "{}"...))
			return p
		}},
	{rule: "ST002", name: "long-metadata", lookalike: true,
		build: file(map[string]string{"format": "pt", "notes": strings.Repeat("x", 100_000)})},
	{rule: "ST003", name: "truncated-header", want: []string{"ST003"},
		build: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "model.safetensors")
			b := binary.LittleEndian.AppendUint64(nil, 1000)
			writeFile(t, p, append(b, `{"a":`...))
			return p
		}},
	{rule: "ST003", name: "header-fills-file", lookalike: true, build: raw(`{"__metadata__":{"format":"pt"}}`, nil)},
	{rule: "ST004", name: "latin1-name", want: []string{"ST004"},
		build: raw("{\"caf\xe9\":{"+`"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{0})},
	{rule: "ST004", name: "utf8-name", lookalike: true,
		build: raw(`{"café":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{0})},
	{rule: "ST005", name: "cut-json", want: []string{"ST005"}, build: raw(`{"a":{"dtype":"U8"`, nil)},
	{rule: "ST005", name: "space-padded", lookalike: true, build: raw(`{}      `, nil)},
	{rule: "ST006", name: "array", want: []string{"ST006"}, build: raw(`[1,2,3]`, nil)},
	{rule: "ST006", name: "object", lookalike: true, build: raw(`{}`, nil)},
	{rule: "ST007", name: "same-tensor-twice", want: []string{"ST007 w"},
		build: raw(`{"w":{`+f32x2+`[0,8]},"w":{`+f32x2+`[8,16]}}`, make([]byte, 16))},
	{rule: "ST007", name: "similar-names", lookalike: true,
		build: raw(`{"w":{`+f32x2+`[0,8]},"w2":{`+f32x2+`[8,16]}}`, make([]byte, 16))},
	{rule: "ST008", name: "number-value", want: []string{"ST008"}, build: raw(`{"__metadata__":{"format":"pt","step":1}}`, nil)},
	{rule: "ST008", name: "string-values", lookalike: true, build: raw(`{"__metadata__":{"format":"pt","step":"1"}}`, nil)},
	{rule: "ST009", name: "no-shape", want: []string{"ST009 w"},
		build: raw(`{"w":{"dtype":"F32","data_offsets":[0,8]}}`, make([]byte, 8))},
	{rule: "ST009", name: "key-order", lookalike: true,
		build: raw(`{"w":{"data_offsets":[0,8],"shape":[2],"dtype":"F32"}}`, make([]byte, 8))},
	{rule: "ST010", name: "lowercase", want: []string{"ST010 w"},
		build: raw(`{"w":{"dtype":"bf16","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4))},
	{rule: "ST010", name: "F8", lookalike: true,
		build: raw(`{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}`, make([]byte, 2))},
	{rule: "ST011", name: "huge-shape", want: []string{"ST011 w"},
		build: raw(`{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}}`, make([]byte, 4))},
	{rule: "ST011", name: "empty-dim", lookalike: true,
		build: raw(`{"w":{"dtype":"F32","shape":[4611686018427387904,0],"data_offsets":[0,0]}}`, nil)},
	{rule: "ST012", name: "odd-F4", want: []string{"ST012 w"},
		build: raw(`{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`, make([]byte, 2))},
	{rule: "ST012", name: "even-F4", lookalike: true,
		build: raw(`{"w":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}`, make([]byte, 2))},
	{rule: "ST013", name: "F32-as-U8-shape", want: []string{"ST013 w"},
		build: raw(`{"w":{"dtype":"F32","shape":[8],"data_offsets":[0,8]}}`, make([]byte, 8))},
	{rule: "ST013", name: "U8-8", lookalike: true,
		build: raw(`{"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`, make([]byte, 8))},
	{rule: "ST014", name: "begin-after-end", want: []string{"ST014 w"},
		build: raw(`{"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, make([]byte, 4))},
	{rule: "ST014", name: "empty-at-end", lookalike: true,
		build: raw(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"w":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}}`, make([]byte, 4))},
	{rule: "ST015", name: "hole", want: []string{"ST015 b"},
		build: raw(`{"a":{`+f32x2+`[0,8]},"b":{`+f32x2+`[12,20]}}`, make([]byte, 20))},
	{rule: "ST015", name: "out-of-order-contiguous", lookalike: true,
		build: raw(`{"b":{`+f32x2+`[8,16]},"a":{`+f32x2+`[0,8]}}`, make([]byte, 16))},
	{rule: "ST016", name: "half-overlap", want: []string{"ST016 b"},
		build: raw(`{"a":{`+f32x2+`[0,8]},"b":{`+f32x2+`[4,12]}}`, make([]byte, 12))},
	{rule: "ST016", name: "adjacent", lookalike: true,
		build: raw(`{"a":{`+f32x2+`[0,8]},"b":{`+f32x2+`[8,16]}}`, make([]byte, 16))},
	{rule: "ST017", name: "aliased", want: []string{"ST017 b"},
		build: raw(`{"a":{`+f32x2+`[0,8]},"b":{`+f32x2+`[0,8]}}`, make([]byte, 8))},
	{rule: "ST017", name: "two-empty", lookalike: true,
		build: raw(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"c":{`+f32x2+`[0,8]}}`, make([]byte, 8))},
	{rule: "ST018", name: "truncated-data", want: []string{"ST018 a"},
		build: raw(`{"a":{`+f32x2+`[0,8]}}`, make([]byte, 5))},
	{rule: "ST018", name: "exact-data", lookalike: true, build: raw(`{"a":{`+f32x2+`[0,8]}}`, make([]byte, 8))},
	{rule: "ST019", name: "appended-zip", want: []string{"ST019"},
		build: raw(`{"a":{`+f32x2+`[0,8]}}`, append(make([]byte, 8), "PK\x03\x04"...))},
	{rule: "ST019", name: "padded-header", lookalike: true, build: raw(`{"a":{`+f32x2+`[0,8]}}  `, make([]byte, 8))},
	{rule: "ST020", name: "26MB-header", want: []string{"ST020"},
		build: file(map[string]string{"format": "pt", "blob": strings.Repeat("x", 26_000_000)})},
	{rule: "ST020", name: "many-tensors", lookalike: true,
		build: func(t *testing.T, dir string) string {
			var ts []tensorFix
			for i := range 2000 {
				ts = append(ts, tensorFix{Name: strings.Repeat("n", 100) + string(rune('a'+i%26)) + strings.Repeat("z", i/26), DType: dtype.F32, Shape: []int64{1}})
			}
			return file(pt, ts...)(t, dir)
		}},
	{rule: "ST021", name: "unreadable", want: []string{"ST021"},
		build: func(t *testing.T, dir string) string {
			if os.Geteuid() == 0 {
				t.Skip("root reads files regardless of permissions")
			}
			p := filepath.Join(dir, "model.safetensors")
			writeFile(t, p, []byte("x"))
			if err := os.Chmod(p, 0); err != nil {
				t.Fatal(err)
			}
			return p
		}},
	{rule: "ST021", name: "readable", lookalike: true, build: file(pt, tensorFix{Name: "w", DType: dtype.BF16, Shape: []int64{2, 2}})},
	{rule: "ST023", name: "rank-65", want: []string{"ST023 w"},
		build: raw(`{"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}`, make([]byte, 1))},
	{rule: "ST023", name: "rank-64", lookalike: true,
		build: raw(`{"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}`, make([]byte, 1))},
	{rule: "ST022", name: "no-format", want: []string{"ST022"}, build: file(map[string]string{"producer": "x"})},
	{rule: "ST022", name: "no-format-unknown", want: []string{"ST022"}, build: file(map[string]string{"format": "torch"})},
	{rule: "ST022", name: "no-metadata", lookalike: true, build: file(nil, tensorFix{Name: "w", DType: dtype.F32, Shape: []int64{1}})},
	{rule: "ST022", name: "mlx", lookalike: true, build: file(map[string]string{"format": "mlx"})},
}

func TestStructureRules(t *testing.T) {
	runCases(t, structureCases)
	checkCoverage(t, structureCases, "ST")
}

// TestEveryCodeHasARule checks that each safetensors.Code maps to exactly
// one ST rule, by running the rules over hand-made views.
func TestEveryCodeHasARule(t *testing.T) {
	for _, code := range safetensors.Codes() {
		c := &audit.Checkpoint{Files: []*audit.File{{
			Path: "m.safetensors", Member: true,
			Err: &safetensors.FormatError{Code: code, Msg: "x"},
		}}}
		var ids []string
		for _, d := range audit.RunRules(c, All()) {
			ids = append(ids, d.Rule)
		}
		if len(ids) != 1 || ids[0] == "ST021" {
			t.Errorf("code %v: rules %v, want exactly one specific ST rule", code, ids)
		}
	}
	// An unknown code and an I/O error go to ST021.
	for _, err := range []error{&safetensors.FormatError{Code: 9999, Msg: "new"}, errors.New("read error")} {
		c := &audit.Checkpoint{Files: []*audit.File{{Path: "m.safetensors", Member: true, Err: err}}}
		ds := audit.RunRules(c, All())
		if len(ds) != 1 || ds[0].Rule != "ST021" {
			t.Errorf("%v: %v, want one ST021", err, ds)
		}
	}
}

func TestStructuralRuleID(t *testing.T) {
	for code, want := range map[safetensors.Code]string{
		safetensors.CodeTooShort:        "ST001",
		safetensors.CodeHeaderTooLarge:  "ST002",
		safetensors.CodeDataOutOfBounds: "ST018",
	} {
		if got := StructuralRuleID(code); got != want {
			t.Errorf("StructuralRuleID(%s) = %s, want %s", code, got, want)
		}
	}
}
