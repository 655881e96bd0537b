package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The sizes of Llama-2-7B (meta-llama/Llama-2-7b-hf): 6,738,415,616
// parameters with 32 layers, 13,476,831,232 bytes of bf16 weights, as its
// model.safetensors.index.json says. They check the element counts that
// layersFor uses against the real model, not against themselves.
func TestLlama7BSizes(t *testing.T) {
	const params7B = 6_738_415_616
	if got := fixedElements + 32*layerElements; got != params7B {
		t.Errorf("32 layers: %d elements, want %d (Llama-2-7B)", got, params7B)
	}
	if got := checkpointBytes(32, 2); got != 13_476_831_232 {
		t.Errorf("32 layers bf16: %d bytes, want 13476831232", got)
	}
	if got := tensorCount(32); got != 291 {
		t.Errorf("32 layers: %d tensors, want 291", got)
	}
}

func TestLayersFor(t *testing.T) {
	for _, c := range []struct {
		size, elem int64
		layers     int
	}{
		{2e9, 2, 4},  // 2.14 GB is closer to 2 GB than 1.74 GB
		{8e9, 2, 18}, // 7.81 GB
		{8e9, 4, 9},  // 8.34 GB
		{1, 2, 1},    // never fewer than one layer
		{13.5e9, 2, 32},
	} {
		got, bytes := layersFor(c.size, c.elem)
		if got != c.layers {
			t.Errorf("layersFor(%d, %d) = %d layers, want %d", c.size, c.elem, got, c.layers)
		}
		if bytes != checkpointBytes(got, c.elem) {
			t.Errorf("layersFor(%d, %d) bytes = %d, want %d", c.size, c.elem, bytes, checkpointBytes(got, c.elem))
		}
		// No other layer count is closer to the size asked for.
		for _, other := range []int{got - 1, got + 1} {
			if other >= 1 && abs(checkpointBytes(other, c.elem)-c.size) < abs(bytes-c.size) {
				t.Errorf("layersFor(%d, %d) = %d, but %d layers come closer", c.size, c.elem, got, other)
			}
		}
	}
}

func abs(x int64) int64 { return max(x, -x) }

func TestMedian(t *testing.T) {
	s := time.Second
	for _, c := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{nil, 0},
		{[]time.Duration{3 * s}, 3 * s},
		{[]time.Duration{5 * s, 1 * s, 3 * s}, 3 * s},
		{[]time.Duration{4 * s, 1 * s, 2 * s, 9 * s}, 3 * s},
	} {
		in := append([]time.Duration(nil), c.in...)
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", in, got, c.want)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Fatalf("median reordered its argument: %v", c.in)
			}
		}
	}
}

func TestDTypeSize(t *testing.T) {
	for dt, want := range map[string]int64{"bf16": 2, "f16": 2, "f32": 4, "BF16": 2} {
		if got, err := dtypeSize(dt); err != nil || got != want {
			t.Errorf("dtypeSize(%q) = %d, %v; want %d", dt, got, err, want)
		}
	}
	if _, err := dtypeSize("int8"); err == nil {
		t.Error("dtypeSize(int8) did not fail")
	}
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-size", "lots"},
		{"-runs", "0"},
		{"-convert", "gpu"},
		{"extra"},
		{"-" + childFlag, "only-src"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("run(%q) = %d, want 2 (stderr %q)", args, code, errb.String())
		}
		if !strings.Contains(errb.String(), "qconv-bench") && !strings.Contains(errb.String(), "invalid") {
			t.Errorf("run(%q): stderr %q does not explain", args, errb.String())
		}
	}
}

func TestReport(t *testing.T) {
	var b bytes.Buffer
	tk := func(name string, rss bool, secs ...float64) *task {
		t := &task{name: name, showRSS: rss}
		for _, x := range secs {
			t.samples = append(t.samples, sample{wall: time.Duration(x * float64(time.Second)), maxRSS: 100 << 20})
		}
		return t
	}
	report(&b, reportInfo{
		qconv: "qconv", version: "dev", src: "/in", dtype: "bf16", layers: 4, files: 3, runs: 3,
		inBytes: 2e9, outBytes: 1e9, load: "0 0 0",
		tasks: []*task{tk("cp -r", false, 1, 2, 3), tk("qconv convert", true, 3, 4, 5)},
	})
	out := b.String()
	for _, want := range []string{
		"ratio qconv convert / cp -r: 2.00",
		"peak RSS of each qconv convert run: 100.0 MiB, 100.0 MiB, 100.0 MiB",
		"2000 MB of bf16 weights in 3 files + index, 39 tensors",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// 2e9 bytes in a median of 4 s: 500 MB/s.
	if !strings.Contains(out, " 500 ") {
		t.Errorf("report lacks the convert's 500 MB/s:\n%s", out)
	}
}

// -generate-only prints the input's directory and builds and times
// nothing; an input that is complete is reused, not rewritten. It needs
// no go tool (a host with prebuilt binaries has none).
func TestGenerateOnly(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	dir := t.TempDir()
	in := filepath.Join(dir, "in-bf16-1L")
	if err := os.MkdirAll(in, 0o777); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(in, "model-00001-of-00001.safetensors"), make([]byte, 100), 0o644)
	os.WriteFile(in+".complete", nil, 0o644)
	var out, errOut bytes.Buffer
	code := run([]string{"-generate-only", "-size", "1GB", "-dir", dir}, &out, &errOut)
	if code != 0 || out.String() != in+"\n" {
		t.Fatalf("exit %d, stdout %q, stderr %s", code, out.String(), errOut.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "bin")); !os.IsNotExist(err) {
		t.Error("-generate-only built a binary")
	}
	if strings.Contains(errOut.String(), "issue") {
		t.Errorf("internal wording: %s", errOut.String())
	}
}

// The report speaks of the project only.
func TestReportWording(t *testing.T) {
	var b bytes.Buffer
	report(&b, reportInfo{qconv: "qconv", version: "dev", src: "in", dtype: "bf16", runs: 3})
	if strings.Contains(b.String(), "issue") {
		t.Errorf("report mentions an issue:\n%s", b.String())
	}
}

// The benchmark's documentation and messages speak of the project, not of
// its issue tracker.
func TestNoIssueWording(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if i := strings.Index(strings.ToLower(string(b)), "issue"); i >= 0 {
			t.Errorf("%s mentions an issue: %q", f, string(b)[max(0, i-40):min(len(b), i+20)])
		}
	}
}
