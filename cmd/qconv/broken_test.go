package main

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// stTensor is a tensor of a rewritten safetensors file.
type stTensor struct {
	name  string
	dtype dtype.DType
	shape []int64
	data  []byte
}

// rewriteST reads path, lets edit change its tensors, and writes it back.
func rewriteST(t *testing.T, path string, edit func([]stTensor) []stTensor) {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var ts []stTensor
	for _, ti := range f.Tensors() {
		b, err := f.ReadTensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, stTensor{ti.Name, ti.DType, ti.Shape, b})
	}
	meta := f.Metadata()
	f.Close()
	ts = edit(ts)
	specs := make([]safetensors.TensorSpec, len(ts))
	for i, x := range ts {
		specs[i] = safetensors.TensorSpec{Name: x.name, DType: x.dtype, Shape: x.shape}
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
	byName := map[string][]byte{}
	for _, x := range ts {
		byName[x.name] = x.data
	}
	for _, ti := range plan.Tensors {
		if _, err := w.Write(byName[ti.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o666); err != nil {
		t.Fatal(err)
	}
}

func f32s(vals ...float32) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

const bw = "model.layers.0.mlp.down_proj.weight"

// editTensor changes tensor name with f.
func editTensor(name string, f func(*stTensor)) func([]stTensor) []stTensor {
	return func(ts []stTensor) []stTensor {
		for i := range ts {
			if ts[i].name == name {
				f(&ts[i])
			}
		}
		return ts
	}
}

// setState replaces the quant-state JSON of bw with what edit makes of it.
func setState(qt string, edit func(*bnb.QuantState)) func([]stTensor) []stTensor {
	return editTensor(bw+".quant_state.bitsandbytes__"+qt, func(x *stTensor) {
		st, err := bnb.ParseQuantState(x.data)
		if err != nil {
			panic(err)
		}
		edit(&st)
		x.data = st.MarshalPython()
		x.shape = []int64{int64(len(x.data))}
	})
}

// TestBrokenWeightsAgree follows the recipes of issue 14: for each way a
// 4-bit weight can be broken, audit reports an error (exit 1) and dequant
// and verify refuse the checkpoint (exit 2): one judgement
// (formats/bnb.CheckShape, CheckPackedBytes, CheckStats) for all three.
func TestBrokenWeightsAgree(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	cases := []struct {
		name, model, rule string
		edit              func([]stTensor) []stTensor
	}{
		{"quant state deleted", "tiny-llama-bf16-nf4-dq-u8", "BNB003", func(ts []stTensor) []stTensor {
			out := ts[:0]
			for _, x := range ts {
				if x.name != bw+".quant_state.bitsandbytes__nf4" {
					out = append(out, x)
				}
			}
			return out
		}},
		{"NaN nested_absmax", "tiny-llama-bf16-nf4-dq-u8", "BNB013", editTensor(bw+".nested_absmax", func(x *stTensor) { copy(x.data, f32s(nan)) })},
		{"negated nested_absmax", "tiny-llama-bf16-nf4-dq-u8", "BNB013", editTensor(bw+".nested_absmax", func(x *stTensor) {
			v := math.Float32frombits(binary.LittleEndian.Uint32(x.data))
			copy(x.data, f32s(-v))
		})},
		{"Inf absmax", "tiny-llama-bf16-nf4-u8", "BNB013", editTensor(bw+".absmax", func(x *stTensor) { copy(x.data[8:], f32s(inf)) })},
		{"negated absmax", "tiny-llama-bf16-nf4-u8", "BNB013", editTensor(bw+".absmax", func(x *stTensor) {
			v := math.Float32frombits(binary.LittleEndian.Uint32(x.data))
			copy(x.data, f32s(-v))
		})},
		{"1-D shape", "tiny-llama-bf16-nf4-dq-u8", "BNB004", setState("nf4", func(s *bnb.QuantState) { s.Shape = []int64{s.Shape[0] * s.Shape[1]} })},
		{"3-D shape", "tiny-llama-bf16-nf4-dq-u8", "BNB004", setState("nf4", func(s *bnb.QuantState) { s.Shape = []int64{2, s.Shape[0] / 2, s.Shape[1]} })},
		{"oversized packed weight", "tiny-llama-bf16-nf4-dq-u8", "BNB006", editTensor(bw, func(x *stTensor) {
			x.data = append(x.data, make([]byte, 64)...)
			x.shape = []int64{int64(len(x.data)), 1}
		})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyModelDir(t, c.model)
			rewriteST(t, filepath.Join(dir, "model.safetensors"), c.edit)
			code, out, _ := qconv("audit", dir)
			if code != 1 || !strings.Contains(out, "error "+c.rule) {
				t.Errorf("audit: exit %d, want an error %s:\n%s", code, c.rule, out)
			}
			code, _, errOut := qconv("dequant", dir, filepath.Join(t.TempDir(), "out"))
			if code != 2 || !strings.Contains(errOut, bw) {
				t.Errorf("dequant: exit %d: %s", code, errOut)
			}
			code, out, errOut = qconv("verify", "--json", filepath.Join(models, "tiny-llama-bf16"), dir)
			if code != 2 || !strings.Contains(errOut, bw) {
				t.Errorf("verify: exit %d: %s%s", code, out, errOut)
			}
		})
	}
}

// copyModelDir copies a golden model directory into a new temporary one.
func copyModelDir(t *testing.T, name string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), name)
	os.MkdirAll(dst, 0o777)
	ents, err := os.ReadDir(filepath.Join(models, name))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(models, name, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, e.Name()), b, 0o666)
	}
	return dst
}

// TestIndexInconsistenciesAgree: an index whose total_size is off by one,
// or that leaves a tensor out of weight_map, is an error for audit as it
// is for inspect and convert.
func TestIndexInconsistenciesAgree(t *testing.T) {
	for _, c := range []struct{ name, rule, old, new string }{
		{"total_size off by one", "IX007", `"total_size": 2001408`, `"total_size": 2001409`},
		{"tensor missing from weight_map", "IX004", `    "model.layers.0.input_layernorm.weight": "model-00005-of-00010.safetensors",` + "\n", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := copyModelDir(t, "tiny-llama-f32")
			path := filepath.Join(dir, "model.safetensors.index.json")
			b, _ := os.ReadFile(path)
			if !bytes.Contains(b, []byte(c.old)) {
				t.Fatalf("index has no %q", c.old)
			}
			os.WriteFile(path, bytes.Replace(b, []byte(c.old), []byte(c.new), 1), 0o666)
			code, out, _ := qconv("audit", dir)
			if code != 1 || !strings.Contains(out, "error "+c.rule) {
				t.Errorf("audit: exit %d, want an error %s:\n%s", code, c.rule, out)
			}
			for _, args := range [][]string{{"inspect", dir}, {"convert", dir, filepath.Join(t.TempDir(), "out"), "--progress", "never"}} {
				if code, _, errOut := qconv(args...); code != 2 {
					t.Errorf("%s: exit %d: %s", args[0], code, errOut)
				}
			}
		})
	}
}

// TestNamesQuoted follows the recipe of issue 14: tensor names holding an
// escape sequence or a newline are printed quoted (Go's %q) by inspect and
// audit, never raw, so that a checkpoint cannot paint the terminal or
// forge a line of output.
func TestNamesQuoted(t *testing.T) {
	dir := copyModelDir(t, "tiny-llama-bf16-nf4-dq-u8")
	evil := "model.norm\x1b[31m\nqconv: all good.weight"
	rewriteST(t, filepath.Join(dir, "model.safetensors"), editTensor("model.norm.weight", func(x *stTensor) { x.name = evil }))
	for _, args := range [][]string{{"inspect", dir}, {"audit", dir}, {"audit", "--format", "github", dir}} {
		_, out, errOut := qconv(args...)
		all := out + errOut
		if strings.Contains(all, "\x1b") || strings.Contains(all, "\nqconv: all good") {
			t.Errorf("qconv %s printed the name raw:\n%s", strings.Join(args, " "), all)
		}
	}
	// An error naming such a file or tensor escapes it too.
	bad := filepath.Join(t.TempDir(), "evil\x1b[2J\nqconv: ok.safetensors")
	os.WriteFile(bad, []byte("junk"), 0o666)
	if _, _, errOut := qconv("inspect", bad); strings.Contains(errOut, "\x1b") || strings.Contains(errOut, "\nqconv: ok") {
		t.Errorf("error message holds the name raw: %q", errOut)
	}
	_, out, _ := qconv("inspect", dir)
	if !strings.Contains(out, `"model.norm\x1b[31m\nqconv: all good.weight"`) {
		t.Errorf("inspect does not quote the name:\n%s", out)
	}
}
