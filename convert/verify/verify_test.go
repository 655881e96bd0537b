package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/safetensors"
)

const models = "../../testdata/golden/models"

func model(name string) string { return filepath.Join(models, name) }

// goldenPairs are the quantized checkpoints bitsandbytes and transformers
// wrote, with the checkpoint each was made from.
var goldenPairs = []struct{ src, quant string }{
	{"tiny-llama-bf16", "tiny-llama-bf16-nf4-dq-u8"},
	{"tiny-llama-bf16", "tiny-llama-bf16-nf4-u8"},
	{"tiny-llama-bf16", "tiny-llama-bf16-fp4-dq-u8"},
	{"tiny-llama-bf16", "tiny-llama-bf16-nf4-dq-f32storage"},
	{"tiny-llama-bf16", "tiny-llama-bf16-nf4-dq-bf16storage"},
	{"tiny-llama-f32", "tiny-llama-f32-nf4-dq-u8"},
	{"tiny-llama-f32", "tiny-llama-f32-fp4-dq-u8"},
	{"tiny-llama-b-f32", "tiny-llama-b-f32-nf4-dq-u8"},
	{"tiny-llama-b-f32", "tiny-llama-b-f32-fp4-u8-f16"},
	{"tiny-llama-b-f32", "tiny-llama-b-f32-nf4-dq-f32storage"},
	{"tiny-llama-b-f32", "tiny-llama-b-f32-nf4-dq-bf16storage"},
}

func TestGoldenWithinBounds(t *testing.T) {
	for _, p := range goldenPairs {
		t.Run(p.quant, func(t *testing.T) {
			rep, err := Compare(context.Background(), model(p.src), model(p.quant), Options{})
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			rep.WriteText(&buf)
			if !rep.OK() {
				t.Fatalf("verify failed:\n%s", buf.String())
			}
			t.Logf("%s: SNR %s dB, worst bound ratio %.3f\n%s", p.quant, rep.Totals.SNR, rep.Tensors[0].BoundRatio, buf.String())
		})
	}
}

// copyModel copies a golden model's config.json and model.safetensors to
// a temporary directory, so that a test can damage it.
func copyModel(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(model(name), f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// patchTensor rewrites the bytes of one tensor of dir/model.safetensors in
// place.
func patchTensor(t *testing.T, dir, tensor string, edit func(b []byte)) {
	t.Helper()
	path := filepath.Join(dir, "model.safetensors")
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ti, ok := f.Tensor(tensor)
	off := f.DataOffset()
	f.Close()
	if !ok {
		t.Fatalf("no tensor %q", tensor)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edit(file[off+ti.Begin : off+ti.End])
	if err := os.WriteFile(path, file, 0o666); err != nil {
		t.Fatal(err)
	}
}

// dropTensors rewrites dir/model.safetensors without the given tensors.
func dropTensors(t *testing.T, dir string, names ...string) {
	t.Helper()
	path := filepath.Join(dir, "model.safetensors")
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var specs []safetensors.TensorSpec
	data := map[string][]byte{}
	for _, ti := range f.Tensors() {
		if slices.Contains(names, ti.Name) {
			continue
		}
		b, err := f.ReadTensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		data[ti.Name] = b
		specs = append(specs, safetensors.TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape})
	}
	if len(specs) != len(f.Tensors())-len(names) {
		t.Fatalf("dropTensors: some of %q are not in %s", names, path)
	}
	f.Close()
	writeFile(t, path, specs, data)
}

func quantSuffixes(qt string, dq bool) []string {
	s := []string{"", ".absmax", ".quant_map", ".quant_state.bitsandbytes__" + qt}
	if dq {
		s = append(s, ".nested_absmax", ".nested_quant_map")
	}
	return s
}

// mustFail runs Compare and checks that it fails with exactly the given
// statuses (tensor name -> status).
func mustFail(t *testing.T, src, quant string, want map[string]Status) *Report {
	t.Helper()
	rep, err := Compare(context.Background(), src, quant, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatalf("verify passed a damaged checkpoint")
	}
	got := map[string]Status{}
	for _, tr := range rep.Tensors {
		if tr.Status != StatusOK {
			got[tr.Name] = tr.Status
		}
	}
	if !maps.Equal(got, want) {
		var buf bytes.Buffer
		rep.WriteText(&buf)
		t.Fatalf("failed tensors %v, want %v\n%s", got, want, buf.String())
	}
	if rep.Totals.Failed != len(want) {
		t.Errorf("Totals.Failed = %d, want %d", rep.Totals.Failed, len(want))
	}
	// Failures come first.
	for i, tr := range rep.Tensors[:len(want)] {
		if tr.Status == StatusOK {
			t.Errorf("tensor %d (%s) is ok but listed before a failure", i, tr.Name)
		}
	}
	return rep
}

func TestSwappedNibblesFail(t *testing.T) {
	const w = "model.layers.1.self_attn.o_proj.weight"
	for _, name := range []string{"tiny-llama-bf16-nf4-dq-u8", "tiny-llama-bf16-fp4-dq-u8", "tiny-llama-bf16-nf4-u8", "tiny-llama-bf16-nf4-dq-f32storage"} {
		t.Run(name, func(t *testing.T) {
			dir := copyModel(t, name)
			patchTensor(t, dir, w, func(b []byte) {
				for i, v := range b {
					b[i] = v<<4 | v>>4
				}
			})
			rep := mustFail(t, model("tiny-llama-bf16"), dir, map[string]Status{w: StatusOutOfBounds})
			if tr := rep.Tensors[0]; tr.OutOfBounds < tr.Elements/4 || tr.BadAbsmax != 0 {
				t.Errorf("%d of %d elements out of bounds, %d bad absmax blocks: %s", tr.OutOfBounds, tr.Elements, tr.BadAbsmax, tr.Message)
			}
		})
	}
}

// TestOneNibbleFails damages a single element: the smallest fault.
func TestOneNibbleFails(t *testing.T) {
	const w = "model.layers.0.mlp.down_proj.weight"
	dir := copyModel(t, "tiny-llama-bf16-nf4-dq-u8")
	patchTensor(t, dir, w, func(b []byte) { b[1000] ^= 0x40 }) // element 2000: code ± 4
	rep := mustFail(t, model("tiny-llama-bf16"), dir, map[string]Status{w: StatusOutOfBounds})
	if tr := rep.Tensors[0]; tr.OutOfBounds != 1 || !strings.Contains(tr.Message, "element 2000") {
		t.Errorf("out of bounds %d, message %q; want element 2000 alone", tr.OutOfBounds, tr.Message)
	}
}

func TestShiftedAbsmaxFails(t *testing.T) {
	const w = "model.layers.0.self_attn.q_proj.weight"
	t.Run("double-quant code +1", func(t *testing.T) {
		dir := copyModel(t, "tiny-llama-bf16-nf4-dq-u8")
		for _, blk := range []int{0, 77, 255} {
			t.Run(strconv.Itoa(blk), func(t *testing.T) {
				patchTensor(t, dir, w+".absmax", func(b []byte) { b[blk]++ })
				defer patchTensor(t, dir, w+".absmax", func(b []byte) { b[blk]-- })
				rep := mustFail(t, model("tiny-llama-bf16"), dir, map[string]Status{w: StatusOutOfBounds})
				if tr := rep.Tensors[0]; tr.BadAbsmax != 1 || !strings.Contains(tr.Message, "block "+strconv.Itoa(blk)) {
					t.Errorf("bad absmax blocks %d, message %q", tr.BadAbsmax, tr.Message)
				}
			})
		}
	})
	t.Run("double-quant code -1", func(t *testing.T) {
		dir := copyModel(t, "tiny-llama-bf16-fp4-dq-u8")
		patchTensor(t, dir, w+".absmax", func(b []byte) { b[10]-- })
		mustFail(t, model("tiny-llama-bf16"), dir, map[string]Status{w: StatusOutOfBounds})
	})
	t.Run("float32 absmax x1.001", func(t *testing.T) {
		dir := copyModel(t, "tiny-llama-bf16-nf4-u8")
		patchTensor(t, dir, w+".absmax", func(b []byte) {
			v := math.Float32frombits(binary.LittleEndian.Uint32(b[4*3:]))
			binary.LittleEndian.PutUint32(b[4*3:], math.Float32bits(v*1.001))
		})
		rep := mustFail(t, model("tiny-llama-bf16"), dir, map[string]Status{w: StatusOutOfBounds})
		if tr := rep.Tensors[0]; tr.BadAbsmax != 1 {
			t.Errorf("bad absmax blocks %d, message %q", tr.BadAbsmax, tr.Message)
		}
	})
	t.Run("nested absmax", func(t *testing.T) {
		dir := copyModel(t, "tiny-llama-bf16-nf4-dq-u8")
		patchTensor(t, dir, w+".nested_absmax", func(b []byte) {
			v := math.Float32frombits(binary.LittleEndian.Uint32(b))
			binary.LittleEndian.PutUint32(b, math.Float32bits(v*1.01))
		})
		mustFail(t, model("tiny-llama-bf16"), dir, map[string]Status{w: StatusOutOfBounds})
	})
}

func TestDroppedTensorFails(t *testing.T) {
	const w = "model.layers.1.mlp.up_proj.weight"
	src := model("tiny-llama-bf16")
	t.Run("dense", func(t *testing.T) {
		dir := copyModel(t, "tiny-llama-bf16-nf4-dq-u8")
		dropTensors(t, dir, "model.norm.weight")
		mustFail(t, src, dir, map[string]Status{"model.norm.weight": StatusMissing})
	})
	t.Run("quantized weight", func(t *testing.T) {
		dir := copyModel(t, "tiny-llama-bf16-nf4-dq-u8")
		var names []string
		for _, s := range quantSuffixes("nf4", true) {
			names = append(names, w+s)
		}
		dropTensors(t, dir, names...)
		mustFail(t, src, dir, map[string]Status{w: StatusMissing})
	})
	t.Run("quant state tensor", func(t *testing.T) {
		for _, s := range quantSuffixes("fp4", true)[1:] {
			t.Run(s, func(t *testing.T) {
				dir := copyModel(t, "tiny-llama-bf16-fp4-dq-u8")
				dropTensors(t, dir, w+s)
				rep, err := Compare(context.Background(), src, dir, Options{})
				if s == ".quant_map" {
					// bitsandbytes ignores the stored 4-bit code book, and so
					// does verify: nothing is lost.
					if err != nil || !rep.OK() {
						t.Fatalf("Compare: %v, ok %v", err, rep != nil && rep.OK())
					}
					return
				}
				// A broken 4-bit weight (an error for audit too, and for
				// dequant) is an error, not a finding: without its quant
				// state the statistics are orphans.
				if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("tensor %q", w)) {
					t.Fatalf("Compare: %v, want an error naming %q", err, w)
				}
			})
		}
	})
	t.Run("extra", func(t *testing.T) {
		dir := copyModel(t, "tiny-llama-bf16")
		dropTensors(t, dir, "model.norm.weight", w)
		mustFail(t, dir, model("tiny-llama-bf16-nf4-dq-u8"), map[string]Status{"model.norm.weight": StatusExtra, w: StatusExtra})
	})
}

// TestDenseChangeFails changes one element of a kept tensor by one ulp.
func TestDenseChangeFails(t *testing.T) {
	dir := copyModel(t, "tiny-llama-bf16-nf4-dq-u8")
	patchTensor(t, dir, "lm_head.weight", func(b []byte) { b[2*4321] ^= 1 })
	rep := mustFail(t, model("tiny-llama-bf16"), dir, map[string]Status{"lm_head.weight": StatusMismatch})
	if tr := rep.Tensors[0]; tr.Differing != 1 || !strings.Contains(tr.Message, "element 4321") {
		t.Errorf("differing %d, message %q", tr.Differing, tr.Message)
	}
}

// TestWrongSource compares a quantized model with a source it was not
// made from (same shapes, other values).
func TestWrongSource(t *testing.T) {
	rep, err := Compare(context.Background(), model("tiny-llama-b-f32"), model("tiny-llama-bf16-nf4-dq-u8"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatal("verify passed a checkpoint against the wrong source")
	}
}

func TestUnreadable(t *testing.T) {
	for _, c := range []struct{ orig, quant string }{
		{model("tiny-llama-bf16"), filepath.Join(t.TempDir(), "nothing")},
		{filepath.Join(t.TempDir(), "nothing"), model("tiny-llama-bf16-nf4-u8")},
		// The original must be dense.
		{model("tiny-llama-bf16-nf4-u8"), model("tiny-llama-bf16-nf4-u8")},
	} {
		if _, err := Compare(context.Background(), c.orig, c.quant, Options{}); err == nil || !strings.HasPrefix(err.Error(), "verify: ") {
			t.Errorf("Compare(%s, %s): err %v", c.orig, c.quant, err)
		}
	}
	// A truncated file.
	dir := copyModel(t, "tiny-llama-bf16-nf4-u8")
	path := filepath.Join(dir, "model.safetensors")
	fi, _ := os.Stat(path)
	os.Truncate(path, fi.Size()-1)
	if _, err := Compare(context.Background(), model("tiny-llama-bf16"), dir, Options{}); err == nil {
		t.Errorf("Compare of a truncated file: no error")
	}
}

// TestDeterministic checks that the report does not depend on the number
// of workers or the job size.
func TestDeterministic(t *testing.T) {
	dir := copyModel(t, "tiny-llama-bf16-nf4-dq-u8")
	patchTensor(t, dir, "model.layers.0.mlp.down_proj.weight", func(b []byte) { b[20000] ^= 0x11 })
	var want []byte
	for _, o := range []Options{{Workers: 1}, {Workers: 4, JobElements: 1}, {Workers: 3, JobElements: 64 * 256 * 2}, {}} {
		rep, err := Compare(context.Background(), model("tiny-llama-bf16"), dir, o)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := rep.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		if want == nil {
			want = buf.Bytes()
		} else if !bytes.Equal(buf.Bytes(), want) {
			t.Errorf("options %+v: report differs", o)
		}
	}
}

// TestGoldenVectorsWithinBounds checks every quantize_4bit output in the
// golden vectors (all block sizes 32…4096, NF4/FP4, with and without
// double quantization, odd sizes, values on and beside every code
// midpoint, zero and 65504-scaled blocks) against its input: bitsandbytes'
// own output must be within the bounds verify enforces, and reach them
// for the midpoint cases.
func TestGoldenVectorsWithinBounds(t *testing.T) {
	vec, err := safetensors.Open("../../testdata/golden/vectors.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer vec.Close()
	// The original: each "<input>.<case>.weight" is "<input>.input";
	// the other tensors of the file (inputs, dequant outputs) as they are.
	var specs []safetensors.TensorSpec
	data := map[string][]byte{}
	add := func(name string, ti safetensors.TensorInfo) {
		b, err := vec.ReadTensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, safetensors.TensorSpec{Name: name, DType: ti.DType, Shape: ti.Shape})
		data[name] = b
	}
	cases := 0
	for _, ti := range vec.Tensors() {
		switch {
		case strings.HasSuffix(ti.Name, ".input") || strings.HasSuffix(ti.Name, ".dequant"):
			add(ti.Name, ti)
		case strings.HasSuffix(ti.Name, ".weight"):
			input := ti.Name[:strings.IndexByte(ti.Name, '.')] + ".input"
			in, ok := vec.Tensor(input)
			if !ok {
				t.Fatalf("no %s", input)
			}
			add(ti.Name, in)
			cases++
		}
	}
	plan, err := safetensors.NewPlan(nil, specs)
	if err != nil {
		t.Fatal(err)
	}
	out := slices.Clone(plan.Header)
	for _, ti := range plan.Tensors {
		out = append(out, data[ti.Name]...)
	}
	orig := filepath.Join(t.TempDir(), "original.safetensors")
	if err := os.WriteFile(orig, out, 0o666); err != nil {
		t.Fatal(err)
	}
	rep, err := Compare(context.Background(), orig, "../../testdata/golden/vectors.safetensors", Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rep.WriteText(&buf)
	if !rep.OK() || rep.Totals.Quantized != cases || cases != 7*2*8*2 {
		t.Fatalf("%d cases:\n%s", cases, buf.String())
	}
	// The bound is sharp: in blocks whose absmax is 1, inputs exactly on a
	// midpoint between two codes use all of it (up to the rounding slack).
	for _, tr := range rep.Tensors {
		if strings.HasPrefix(tr.Name, "w_special_f32.") && tr.Kind == KindQuantized && !tr.DoubleQuant && tr.Blocksize <= 256 && tr.BoundRatio < 0.9999 {
			t.Errorf("%s: worst element uses %.6f of its bound; the midpoint inputs should reach it", tr.Name, tr.BoundRatio)
		}
	}
}

// A report always writes valid JSON: a NaN or infinite measurement (the
// original held NaN, say) is null, not an encoding error (issue 14).
func TestWriteJSONNonFinite(t *testing.T) {
	r := &Report{Tensors: []*TensorReport{{Name: "w", MaxAbsError: Float(math.NaN()), RMSE: Float(math.Inf(1)), BoundRatio: Float(math.NaN())}}}
	r.Totals.MaxAbsError = Float(math.Inf(-1))
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(buf.Bytes(), &v); err != nil {
		t.Fatalf("invalid JSON: %v\n%s", err, buf.String())
	}
	if !strings.Contains(buf.String(), `"max_abs_error": null`) {
		t.Errorf("NaN not written as null:\n%s", buf.String())
	}
}
