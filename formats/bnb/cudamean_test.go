package bnb

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

// stTensor is one tensor of a safetensors file, read by the small parser
// below (the test files are trusted; formats/safetensors does the validation).
type stTensor struct {
	DType string
	Shape []int
	Data  []byte
}

func readSafetensorsForTest(t *testing.T, path string) map[string]stTensor {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 8 {
		t.Fatalf("%s: too short", path)
	}
	hlen := binary.LittleEndian.Uint64(b)
	if hlen > uint64(len(b)-8) {
		t.Fatalf("%s: header length %d beyond file", path, hlen)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+hlen], &hdr); err != nil {
		t.Fatalf("%s: header: %v", path, err)
	}
	data := b[8+hlen:]
	out := make(map[string]stTensor, len(hdr))
	for name, raw := range hdr {
		if name == "__metadata__" {
			continue
		}
		var e struct {
			DType   string   `json:"dtype"`
			Shape   []int    `json:"shape"`
			Offsets [2]int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("%s: %s: %v", path, name, err)
		}
		if e.Offsets[0] < 0 || e.Offsets[0] > e.Offsets[1] || e.Offsets[1] > int64(len(data)) {
			t.Fatalf("%s: %s: bad offsets %v", path, name, e.Offsets)
		}
		out[name] = stTensor{e.DType, e.Shape, data[e.Offsets[0]:e.Offsets[1]]}
	}
	return out
}

// blockAbsmaxBF16 returns max |x| of each block of a little-endian BF16 vector.
func blockAbsmaxBF16(b []byte, blocksize int) []float32 {
	n := len(b) / 2
	out := make([]float32, 0, (n+blocksize-1)/blocksize)
	for start := 0; start < n; start += blocksize {
		var m float32
		for i := start; i < min(start+blocksize, n); i++ {
			v := math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
			m = max(m, float32(math.Abs(float64(v))))
		}
		out = append(out, m)
	}
	return out
}

func f32sFromBytes(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// correctlyRoundedMean is the float32 nearest to the exact mean (for the
// match-rate log only; float64 sums of up to 2^29 float32 values whose
// exponents are close are exact enough for the logged statistic).
func correctlyRoundedMean(x []float32) float32 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return float32(s / float64(len(x)))
}

type goldenOffsetCase struct {
	name   string
	absmax []float32
	offset float32
}

// goldenOffsetCases pairs every double-quantized golden case with the
// float32 absmax of the same input quantized without double quant, which is
// the vector bitsandbytes took the mean of.
func goldenOffsetCases(t *testing.T) []goldenOffsetCase {
	t.Helper()
	var cases []goldenOffsetCase
	add := func(file string, absmaxKey func(qsKey string) string, fallback func(tensors map[string]stTensor, qsKey string) []float32) {
		tensors := readSafetensorsForTest(t, filepath.Join("..", "..", "testdata", "golden", file))
		for key, ts := range tensors {
			if !strings.Contains(key, ".weight.quant_state.bitsandbytes__") {
				continue
			}
			var qs struct {
				Offset *json.Number `json:"nested_offset"`
			}
			dec := json.NewDecoder(strings.NewReader(string(ts.Data)))
			dec.UseNumber()
			if err := dec.Decode(&qs); err != nil {
				t.Fatalf("%s: %s: %v", file, key, err)
			}
			if qs.Offset == nil {
				continue
			}
			f, err := strconv.ParseFloat(qs.Offset.String(), 64)
			if err != nil {
				t.Fatalf("%s: %s: %v", file, key, err)
			}
			ak := absmaxKey(key)
			var absmax []float32
			if am, ok := tensors[ak]; ok && am.DType == "F32" {
				absmax = f32sFromBytes(am.Data)
			} else if fallback != nil {
				absmax = fallback(tensors, key)
			}
			if absmax == nil {
				t.Fatalf("%s: %s: no F32 tensor %s", file, key, ak)
			}
			cases = append(cases, goldenOffsetCase{file + ":" + key, absmax, float32(f)})
		}
	}
	// vectors: <input>.<qt>.b<B>.dq1.weight.quant_state... <-> <input>.<qt>.b<B>.dq0.weight.absmax
	add("vectors.safetensors", func(k string) string {
		i := strings.Index(k, ".dq1.weight.quant_state.")
		if i < 0 {
			t.Fatalf("unexpected key %s", k)
		}
		return k[:i] + ".dq0.weight.absmax"
	}, nil)
	// wide: <dt>_<qt>_bs<B>_dq.weight.quant_state... <-> <dt>_<qt>_bs<B>_nodq.weight.absmax
	add("vectors-wide.safetensors", func(k string) string {
		i := strings.Index(k, "_dq.weight.quant_state.")
		if i < 0 {
			t.Fatalf("unexpected key %s", k)
		}
		return k[:i] + "_nodq.weight.absmax"
	}, func(tensors map[string]stTensor, k string) []float32 {
		// odd1000_nf4_bs64_dq has no no-double-quant twin: take the absmax
		// of its BF16 input directly (a max of magnitudes is exact).
		if !strings.HasPrefix(k, "odd1000_nf4_bs64_dq.") {
			return nil
		}
		in, ok := tensors["input_odd1000_bf16"]
		if !ok || in.DType != "BF16" {
			return nil
		}
		return blockAbsmaxBF16(in.Data, 64)
	})
	sort.Slice(cases, func(i, j int) bool { return cases[i].name < cases[j].name })
	return cases
}

// TestCudaMeanGolden checks cudaMeanF32 against the nested_offset that real
// bitsandbytes wrote on an H100: every case must match bit for bit.
func TestCudaMeanGolden(t *testing.T) {
	cases := goldenOffsetCases(t)
	if len(cases) < 50 {
		t.Fatalf("only %d golden double-quant cases found", len(cases))
	}
	crMatch := 0
	for _, c := range cases {
		got := cudaMeanF32(c.absmax)
		if math.Float32bits(got) != math.Float32bits(c.offset) {
			t.Errorf("%s (n=%d): cudaMeanF32 = %v (%#08x), bitsandbytes = %v (%#08x)",
				c.name, len(c.absmax), got, math.Float32bits(got), c.offset, math.Float32bits(c.offset))
		}
		if correctlyRoundedMean(c.absmax) == c.offset {
			crMatch++
		}
	}
	t.Logf("%d golden offsets; the correctly rounded mean matches %d of them", len(cases), crMatch)
}

// TestCudaMeanGoldenModels checks cudaMeanF32 against the nested_offset of
// every double-quantized weight in the tiny transformers checkpoints of
// testdata/golden/models. transformers loaded them with dtype=bfloat16, so
// the absmax is taken over the source weights rounded to bfloat16 (a max of
// magnitudes is exact).
func TestCudaMeanGoldenModels(t *testing.T) {
	root := filepath.Join("..", "..", "testdata", "golden", "models")
	dirs, err := filepath.Glob(filepath.Join(root, "tiny-llama-*-dq-*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no double-quantized golden models under %s (%v)", root, err)
	}
	checked, crMatch := 0, 0
	for _, dir := range dirs {
		srcName := "tiny-llama-bf16" // the f32 family holds the same, bf16-exact, values
		if strings.HasPrefix(filepath.Base(dir), "tiny-llama-b-f32") {
			srcName = "tiny-llama-b-f32"
		}
		src := readSafetensorsForTest(t, filepath.Join(root, srcName, "model.safetensors"))
		out := readSafetensorsForTest(t, filepath.Join(dir, "model.safetensors"))
		for key, ts := range out {
			i := strings.Index(key, ".quant_state.bitsandbytes__")
			if i < 0 {
				continue
			}
			var qs struct {
				Blocksize int          `json:"blocksize"`
				Offset    *json.Number `json:"nested_offset"`
			}
			dec := json.NewDecoder(strings.NewReader(string(ts.Data)))
			dec.UseNumber()
			if err := dec.Decode(&qs); err != nil || qs.Offset == nil || qs.Blocksize <= 0 {
				t.Fatalf("%s: %s: bad quant state %q (%v)", dir, key, ts.Data, err)
			}
			f, err := strconv.ParseFloat(qs.Offset.String(), 64)
			if err != nil {
				t.Fatalf("%s: %s: %v", dir, key, err)
			}
			w, ok := src[key[:i]]
			if !ok {
				t.Fatalf("%s: source tensor %s missing", srcName, key[:i])
			}
			var bf []byte
			switch w.DType {
			case "BF16":
				bf = w.Data
			case "F32":
				bf = make([]byte, len(w.Data)/2)
				for j, v := range f32sFromBytes(w.Data) {
					binary.LittleEndian.PutUint16(bf[2*j:], dtype.F32ToBF16(v))
				}
			default:
				t.Fatalf("%s: %s: unexpected dtype %s", srcName, key[:i], w.DType)
			}
			absmax := blockAbsmaxBF16(bf, qs.Blocksize)
			want := float32(f)
			if got := cudaMeanF32(absmax); math.Float32bits(got) != math.Float32bits(want) {
				t.Errorf("%s: %s (n=%d): cudaMeanF32 = %#08x, bitsandbytes = %#08x",
					filepath.Base(dir), key, len(absmax), math.Float32bits(got), math.Float32bits(want))
			}
			if correctlyRoundedMean(absmax) == want {
				crMatch++
			}
			checked++
		}
	}
	if checked < 20 {
		t.Errorf("only %d double-quantized model weights found", checked)
	}
	t.Logf("%d model offsets; the correctly rounded mean matches %d of them", checked, crMatch)
}

var torchMeanAll = flag.Bool("torchmean.all", false,
	"check every recorded torch.mean case of testdata/torchmean (1.5e9 elements; slow)")

// torchMeanSelected reports whether the default (or -short) run checks the
// recorded case gen/n. Every case passed when it was recorded; the default
// run keeps all vectors up to 16384 elements, the absmax-like generator up to
// 300000, and larger vectors at the kernel's shape changes: powers of two,
// more than 512 blocks (two partial sums per thread in the final fold) and
// the 528-block cap.
func torchMeanSelected(gen, n int) bool {
	if *torchMeanAll {
		return true
	}
	if n <= 16384 {
		return true
	}
	if testing.Short() {
		return gen == 1 && n == 704512
	}
	if gen != 1 {
		return false
	}
	if n <= 300000 {
		return true
	}
	switch n {
	case 704512, 1048576, 2097152, 2097153, 4202497, 4333569:
		return true
	}
	return false
}

// TestCudaMeanTorch checks cudaMeanF32 against torch.mean recorded on an H100
// (testdata/torchmean, see its README): integer-hash inputs regenerated here
// (cases.tsv) and torch-RNG absmax vectors stored verbatim (raw_*.f32).
func TestCudaMeanTorch(t *testing.T) {
	checked, bad := 0, 0
	forEachTorchMeanCase(t, torchMeanSelected, func(name string, x []float32, want uint32) {
		checked++
		got := math.Float32bits(cudaMeanF32(x))
		if got != want {
			bad++
			if bad <= 20 {
				t.Errorf("%s (n=%d): cudaMeanF32 = %#08x, torch = %#08x", name, len(x), got, want)
			}
		}
	})
	if bad > 0 {
		t.Errorf("%d of %d torch cases differ", bad, checked)
	}
	if checked < 1000 {
		t.Errorf("only %d torch cases checked", checked)
	}
	t.Logf("%d torch cases checked", checked)
}

// TestCudaMeanSmall checks exact small cases that need no recorded data.
func TestCudaMeanSmall(t *testing.T) {
	if got := cudaMeanF32(nil); !math.IsNaN(float64(got)) {
		t.Errorf("mean of nothing = %v, want NaN", got)
	}
	for _, tc := range []struct {
		x    []float32
		want float32
	}{
		{[]float32{3}, 3},
		{[]float32{1, 2}, 1.5},
		{[]float32{0, 0, 0, 0, 0}, 0},
	} {
		if got := cudaMeanF32(tc.x); got != tc.want {
			t.Errorf("cudaMeanF32(%v) = %v, want %v", tc.x, got, tc.want)
		}
	}
}

func BenchmarkCudaMeanF32(b *testing.B) {
	x := make([]float32, 704512)
	for i := range x {
		x[i] = float32(i%977) * 1e-4
	}
	b.SetBytes(int64(4 * len(x)))
	b.ReportAllocs()
	for b.Loop() {
		_ = cudaMeanF32(x)
	}
}

// lowbias32 is the 32-bit integer hash that testdata/torchmean/record.py
// uses to make its inputs.
func lowbias32(x uint32) uint32 {
	x ^= x >> 16
	x *= 0x7feb352d
	x ^= x >> 15
	x *= 0x846ca68b
	x ^= x >> 16
	return x
}

// torchMeanInput regenerates input gen/seed/n of record.py.
func torchMeanInput(gen int, seed uint64, n int) ([]float32, error) {
	x := make([]float32, n)
	s := uint32(seed * 0x9E3779B9)
	for i := range x {
		h := lowbias32(uint32(i) ^ s)
		h2 := lowbias32(h ^ 0x5BD1E995)
		var b uint32
		switch gen {
		case 0:
			b = (120+h%8)<<23 | h2&0x7FFFFF
		case 1:
			u := float64(h>>8) * 0x1p-24
			t1 := float64(1.4 * u)
			t2 := float64(1.8 + t1)
			b = math.Float32bits(float32(float64(0.02 * t2)))
		case 2:
			b = (90+h%61)<<23 | h2&0x7FFFFF
		case 3:
			b = h2>>31<<31 | (120+h%8)<<23 | h2&0x7FFFFF
		default:
			return nil, fmt.Errorf("unknown generator %d", gen)
		}
		x[i] = math.Float32frombits(b)
	}
	return x, nil
}

// forEachTorchMeanCase calls fn with the input and recorded torch.mean bits
// of every case in testdata/torchmean that keep(gen, n) selects (raw vectors
// have gen -1).
func forEachTorchMeanCase(t *testing.T, keep func(gen, n int) bool, fn func(name string, x []float32, want uint32)) {
	t.Helper()
	dir := filepath.Join("..", "..", "testdata", "torchmean")
	rows := func(file string) [][]string {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		var out [][]string
		for _, line := range strings.Split(string(b), "\n") {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			out = append(out, strings.Split(line, "\t"))
		}
		return out
	}
	hex32 := func(s string) uint32 {
		v, err := strconv.ParseUint(s, 16, 32)
		if err != nil {
			t.Fatal(err)
		}
		return uint32(v)
	}
	for _, f := range rows("cases.tsv") {
		if len(f) < 4 {
			t.Fatalf("cases.tsv: bad row %q", f)
		}
		gen, err1 := strconv.Atoi(f[0])
		seed, err2 := strconv.ParseUint(f[1], 10, 64)
		n, err3 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || err3 != nil || n < 1 {
			t.Fatalf("cases.tsv: bad row %q", f)
		}
		if !keep(gen, n) {
			continue
		}
		x, err := torchMeanInput(gen, seed, n)
		if err != nil {
			t.Fatal(err)
		}
		fn(fmt.Sprintf("gen%d/seed%d", gen, seed), x, hex32(f[3]))
	}
	for _, f := range rows("raw.tsv") {
		if len(f) < 3 {
			t.Fatalf("raw.tsv: bad row %q", f)
		}
		b, err := os.ReadFile(filepath.Join(dir, "raw_"+f[0]+".f32"))
		if err != nil {
			t.Fatal(err)
		}
		x := f32sFromBytes(b)
		if strconv.Itoa(len(x)) != f[1] {
			t.Fatalf("raw_%s.f32: %d values, raw.tsv says %s", f[0], len(x), f[1])
		}
		if keep(-1, len(x)) || len(x) <= 300000 {
			fn("raw/"+f[0], x, hex32(f[2]))
		}
	}
}
