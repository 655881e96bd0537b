package pyjson

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// goldenJSONFiles lists the JSON files transformers wrote in the reference
// checkpoints (json.dumps(indent=2, sort_keys=True) + "\n").
func goldenJSONFiles(t testing.TB) []string {
	t.Helper()
	root := filepath.Join("..", "..", "testdata", "golden", "models")
	var files []string
	for _, pat := range []string{"*/config.json", "*/generation_config.json", "*/model.safetensors.index.json"} {
		m, err := filepath.Glob(filepath.Join(root, pat))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 15 {
		t.Fatalf("found only %d golden JSON files under %s", len(files), root)
	}
	return files
}

func TestGoldenRoundTrip(t *testing.T) {
	for _, f := range goldenJSONFiles(t) {
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		v, err := Parse(want)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		got := append(v.MarshalIndentSorted(), '\n')
		if !bytes.Equal(got, want) {
			t.Errorf("%s: re-marshalled bytes differ\ngot:\n%s\nwant:\n%s", f, got, want)
		}
	}
}

func TestGoldenValues(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "golden", "models", "tiny-llama-bf16-nf4-dq-u8", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := v.Get("quantization_config").Get("bnb_4bit_quant_type").AsString(); !ok || s != "nf4" {
		t.Errorf("bnb_4bit_quant_type = %q, %v", s, ok)
	}
	if lit := v.Get("rms_norm_eps").Literal(); lit != "1e-06" {
		t.Errorf("rms_norm_eps literal = %q", lit)
	}
	if f, ok := v.Get("rope_parameters").Get("rope_theta").Float64(); !ok || f != 10000 {
		t.Errorf("rope_theta = %v, %v", f, ok)
	}
	if n, ok := v.Get("vocab_size").Int64(); !ok || n != 512 {
		t.Errorf("vocab_size = %v, %v", n, ok)
	}
	if _, ok := v.Get("attention_dropout").Int64(); ok {
		t.Error("0.0 should not be an int")
	}
	if !v.Get("pad_token_id").IsNull() || v.Get("pad_token_id") == nil {
		t.Error("pad_token_id should be a present null")
	}
	if v.Get("missing") != nil || v.Get("missing").Get("x") != nil {
		t.Error("missing keys should be nil")
	}
	// Insertion order is file order.
	if m := v.Members(); m[0].Key != "architectures" || m[len(m)-1].Key != "vocab_size" {
		t.Errorf("member order: first %q last %q", m[0].Key, m[len(m)-1].Key)
	}
}

// The expected strings below were produced by CPython 3 json.dumps.
func TestPythonCompatibility(t *testing.T) {
	s := String("a\"b\\c\n\r\t\b\f\x00\x1f\x7f\u0080é€😀/<>&\u2028")
	if got, want := string(s.MarshalCompact()), `"a\"b\\c\n\r\t\b\f\u0000\u001f\u007f\u0080\u00e9\u20ac\ud83d\ude00/<>&\u2028"`; got != want {
		t.Errorf("string:\ngot  %s\nwant %s", got, want)
	}
	obj := Object(
		Member{"b", Array()},
		Member{"a", Object()},
		Member{"c", Array(Int(1), Object(Member{"z", Null()}, Member{"y", Bool(true)}))},
		Member{"é", Int(1)},
		Member{"z", Int(2)},
		Member{"😀", Int(3)},
		Member{"\uffff", Int(4)},
	)
	wantIndent := `{
  "a": {},
  "b": [],
  "c": [
    1,
    {
      "y": true,
      "z": null
    }
  ],
  "z": 2,
  "\u00e9": 1,
  "\uffff": 4,
  "\ud83d\ude00": 3
}`
	if got := string(obj.MarshalIndentSorted()); got != wantIndent {
		t.Errorf("indent:\ngot\n%s\nwant\n%s", got, wantIndent)
	}
	for _, k := range []string{"é", "z", "😀", "\uffff"} {
		obj.Delete(k)
	}
	if got, want := string(obj.MarshalCompact()), `{"b": [], "a": {}, "c": [1, {"z": null, "y": true}]}`; got != want {
		t.Errorf("compact:\ngot  %s\nwant %s", got, want)
	}
	// Lone surrogates survive as escapes, a valid pair becomes one code point.
	v, err := Parse([]byte(`"\ud800\ud83d\ude00\udc00x"`))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := v.AsString(); got != "\xed\xa0\x80\xf0\x9f\x98\x80\xed\xb0\x80x" {
		t.Errorf("surrogates stored as %q", got)
	}
	if got, want := string(v.MarshalCompact()), `"\ud800\ud83d\ude00\udc00x"`; got != want {
		t.Errorf("surrogates written as %s, want %s", got, want)
	}
}

func TestFormatFloat(t *testing.T) {
	// Python json.dumps(float) outputs.
	cases := []struct {
		f    float64
		want string
	}{
		{1e-06, "1e-06"}, {10000.0, "10000.0"}, {0.0, "0.0"}, {math.Copysign(0, -1), "-0.0"},
		{0.02, "0.02"}, {1e16, "1e+16"}, {1.5e16, "1.5e+16"}, {9999999999999998.0, "9999999999999998.0"},
		{1e-4, "0.0001"}, {0.0001234, "0.0001234"}, {1.2345e-05, "1.2345e-05"}, {1e100, "1e+100"},
		{5e-324, "5e-324"}, {1.7976931348623157e308, "1.7976931348623157e+308"},
		{0.30000000000000004, "0.30000000000000004"}, {123456789.123, "123456789.123"},
		{math.NaN(), "NaN"}, {math.Inf(1), "Infinity"}, {math.Inf(-1), "-Infinity"},
	}
	for _, c := range cases {
		if got := FormatFloat(c.f); got != c.want {
			t.Errorf("FormatFloat(%v) = %q, want %q", c.f, got, c.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		in      string
		wantDup bool
	}{
		{``, false}, {` `, false}, {`{`, false}, {`{"a"}`, false}, {`{"a":1,}`, false}, {`[1,]`, false},
		{`[1 2]`, false}, {`01`, false}, {`1.`, false}, {`.5`, false}, {`1e`, false}, {`-`, false},
		{`+1`, false}, {`"\x"`, false}, {`"\u12"`, false}, {"\"a\x01\"", false}, {"\"\xff\"", false},
		{"\xef\xbb\xbf{}", false}, {`tru`, false}, {`nan`, false}, {`{} {}`, false}, {`{'a':1}`, false},
		{"\"\xed\xa0\x80\"", false}, // raw surrogate bytes
		{`{"a":1,"a":2}`, true}, {`{"x":{"k":1,"k":1}}`, true}, {`{"\u0061":1,"a":2}`, true},
	}
	for _, c := range cases {
		v, err := Parse([]byte(c.in))
		if err == nil {
			t.Errorf("Parse(%q) = %s, want error", c.in, v.MarshalCompact())
			continue
		}
		var dup *DuplicateKeyError
		var syn *SyntaxError
		if c.wantDup != errors.As(err, &dup) {
			t.Errorf("Parse(%q): %v, want duplicate=%v", c.in, err, c.wantDup)
		}
		if !c.wantDup && !errors.As(err, &syn) {
			t.Errorf("Parse(%q): %T, want *SyntaxError", c.in, err)
		}
	}
	deep := bytes.Repeat([]byte("["), MaxDepth+1)
	if _, err := Parse(deep); err == nil {
		t.Error("too deep nesting accepted")
	}
}

func TestParseAccepts(t *testing.T) {
	for _, in := range []string{
		`NaN`, `-Infinity`, `[Infinity, -0, 1E+5, 1.5e-3]`, " \t\r\n{}\n", `"\/"`, `{"":""}`,
		`[[[]]]`, `-0.0`, `1e999`,
	} {
		v, err := Parse([]byte(in))
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		w, err := Parse(v.MarshalCompact())
		if err != nil || !v.Equal(w) {
			t.Errorf("Parse(%q) does not round-trip: %s (%v)", in, v.MarshalCompact(), err)
		}
	}
}

func TestEdit(t *testing.T) {
	v := Object(Member{"b", Int(1)}, Member{"a", Int(2)}, Member{"b", Int(3)})
	if got := string(v.MarshalCompact()); got != `{"b": 3, "a": 2}` {
		t.Errorf("Object with repeated key = %s", got)
	}
	v.Set("c", nil)
	v.Set("a", String("x"))
	if !v.Delete("b") || v.Delete("b") {
		t.Error("Delete")
	}
	if got := string(v.MarshalCompact()); got != `{"a": "x", "c": null}` {
		t.Errorf("after edits = %s", got)
	}
	c := v.Clone()
	c.Set("a", Float(0.5))
	if v.Equal(c) || !v.Equal(v.Clone()) {
		t.Error("Clone shares state")
	}
	a := Array(nil, Bool(false))
	a.Append(Int(-7))
	if got := string(a.MarshalIndentSorted()); got != "[\n  null,\n  false,\n  -7\n]" {
		t.Errorf("array = %q", got)
	}
	if a.Index(2).Literal() != "-7" || a.Index(3) != nil || a.Len() != 3 {
		t.Error("Index/Len")
	}
	for _, lit := range []string{"0", "-0", "1e-06", "10000.0", "NaN", "-Infinity", "1E+2"} {
		if !ValidNumber(lit) {
			t.Errorf("ValidNumber(%q) = false", lit)
		}
	}
	for _, lit := range []string{"", "01", "1.", ".1", "inf", "--1", "1e", "0x1", " 1"} {
		if ValidNumber(lit) {
			t.Errorf("ValidNumber(%q) = true", lit)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, file := range goldenJSONFiles(f) {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{`{"a":[1,2,{"b":null}]}`, `"\ud800\udc00\ud800"`, `[NaN,-Infinity,1e5]`, `{"a":1,"a":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Parse(data)
		if err != nil {
			return
		}
		compact := v.MarshalCompact()
		w, err := Parse(compact)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", compact, err)
		}
		if !v.Equal(w) {
			t.Fatalf("parse(marshal(v)) != v for %q", compact)
		}
		indented := v.MarshalIndentSorted()
		u, err := Parse(indented)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", indented, err)
		}
		if again := u.MarshalIndentSorted(); !bytes.Equal(again, indented) {
			t.Fatalf("sorted output not stable:\n%s\n%s", indented, again)
		}
		for _, c := range indented {
			if c >= 0x80 {
				t.Fatalf("non-ASCII byte in output %q", indented)
			}
		}
	})
}

// bigIndex returns an index.json-like document with n weight_map entries.
func bigIndex(n int) []byte {
	members := make([]Member, n)
	for i := range members {
		members[i] = Member{Key: "model.layers." + FormatFloat(float64(i)) + ".mlp.experts.w.weight", Value: String("model-00001-of-00100.safetensors")}
	}
	return Object(Member{"metadata", Object(Member{"total_size", Int(1 << 40)})}, Member{"weight_map", Object(members...)}).MarshalIndentSorted()
}

func BenchmarkParse(b *testing.B) {
	data := bigIndex(100000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshalIndentSorted(b *testing.B) {
	data := bigIndex(100000)
	v, err := Parse(data)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		v.MarshalIndentSorted()
	}
}
