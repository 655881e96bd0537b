package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestConvertCLI runs "qconv convert" in-process on the golden models and
// compares the output directory with what transformers + bitsandbytes wrote.
func TestConvertCLI(t *testing.T) {
	cases := []struct {
		src, want string
		flags     []string
	}{
		{"tiny-llama-bf16", "tiny-llama-bf16-nf4-dq-u8", nil},
		{"tiny-llama-f32", "tiny-llama-f32-fp4-dq-u8", []string{"--quant-type", "fp4", "--dtype", "bf16", "-j", "3"}},
		{"tiny-llama-b-f32", "tiny-llama-b-f32-fp4-u8-f16", []string{"--quant-type=fp4", "--double-quant=false", "--dtype", "f16", "--compute-dtype", "f32"}},
	}
	for _, c := range cases {
		t.Run(c.want, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "out")
			// Flags after the positional arguments, as users type them.
			args := append([]string{"convert", filepath.Join(models, c.src), dst, "--progress", "never"}, c.flags...)
			code, stdout, stderr := qconv(args...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if !strings.Contains(stdout, "wrote "+dst) {
				t.Errorf("stdout %q", stdout)
			}
			want := filepath.Join(models, c.want)
			ents, err := os.ReadDir(want)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadDir(dst)
			if len(got) != len(ents) {
				t.Errorf("%d files in the output, want %d", len(got), len(ents))
			}
			for _, e := range ents {
				w, _ := os.ReadFile(filepath.Join(want, e.Name()))
				g, err := os.ReadFile(filepath.Join(dst, e.Name()))
				if err != nil || !bytes.Equal(g, w) {
					t.Errorf("%s differs from the golden file (%v)", e.Name(), err)
				}
			}
		})
	}
}

func TestConvertCLIJSON(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "out")
	code, stdout, stderr := qconv("convert", "--json", "--progress=never", filepath.Join(models, "tiny-llama-bf16"), dst)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var sum map[string]any
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	for key, want := range map[string]any{"tensors_quantized": 14.0, "tensors_kept": 7.0, "output_bytes": 481292.0, "quant_type": "nf4", "dtype": "bfloat16"} {
		if sum[key] != want {
			t.Errorf("%s = %v, want %v", key, sum[key], want)
		}
	}
	for _, key := range []string{"input_bytes", "seconds", "peak_rss_bytes"} {
		if v, ok := sum[key].(float64); !ok || v <= 0 {
			t.Errorf("%s = %v", key, sum[key])
		}
	}
}

func TestConvertCLIErrors(t *testing.T) {
	tmp := t.TempDir()
	nonEmpty := filepath.Join(tmp, "full")
	os.MkdirAll(nonEmpty, 0o777)
	os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o666)
	src := filepath.Join(models, "tiny-llama-bf16")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"convert", src}, "expected SRC and DST"},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "--quant-type", "int4"}, "--quant-type"},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "--blocksize", "100"}, "--blocksize"},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "--dtype", "int8"}, "--dtype"},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "--max-shard-size", "5XB"}, "--max-shard-size"},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "--progress", "sometimes"}, "--progress"},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "-j", "-1"}, "-j -1: want 0 (all CPUs) or more"},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "--blocksiz", "64"}, "unknown flag --blocksiz; did you mean --blocksize?"},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "-blocksize", "x"}, `--blocksize "x": not a number`},
		{[]string{"convert", src, filepath.Join(tmp, "a.safetensors")}, "names a .safetensors file, but convert writes a directory"},
		{[]string{"convert", filepath.Join(src, "config.json"), filepath.Join(tmp, "a")}, "config.json: not a safetensors file (ST002: "},
		{[]string{"convert", src, filepath.Join(tmp, "a"), "--finalize"}, "nothing to finalize"},
		{[]string{"convert", filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8"), filepath.Join(tmp, "a")}, "already quantized"},
		{[]string{"convert", filepath.Join(tmp, "missing"), filepath.Join(tmp, "a")}, "missing"},
		{[]string{"convert", src, nonEmpty}, "not empty"},
	}
	for _, c := range cases {
		code, _, stderr := qconv(c.args...)
		if code != exitError || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args[1:], code, stderr, c.want)
		}
		if _, err := os.Stat(filepath.Join(tmp, "a")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%v: left %s behind", c.args[1:], filepath.Join(tmp, "a"))
		}
	}
}

func TestParsePart(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if p, err := parsePart("2/5", getenv); err != nil || p.Index != 2 || p.Count != 5 {
		t.Errorf("2/5: %v %v", p, err)
	}
	for _, bad := range []string{"5/5", "-1/3", "x/3", "1", "1/0", "auto/3", "/3"} {
		if _, err := parsePart(bad, getenv); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	env["SLURM_ARRAY_TASK_ID"] = "1"
	if p, err := parsePart("auto/3", getenv); err != nil || p.Index != 1 {
		t.Errorf("slurm: %v %v", p, err)
	}
	env["JOB_COMPLETION_INDEX"] = "2"
	if p, err := parsePart("/3", getenv); err != nil || p.Index != 2 {
		t.Errorf("kubernetes: %v %v", p, err)
	}
	env["JOB_COMPLETION_INDEX"] = "3"
	if _, err := parsePart("auto/3", getenv); err == nil {
		t.Error("index out of range: no error")
	}
}

// TestConvertCLIParts runs a conversion as 3 parts and a finalize step,
// the commands that examples/ runs under make, Kubernetes and Slurm.
func TestConvertCLIParts(t *testing.T) {
	src := filepath.Join(models, "tiny-llama-bf16")
	tmp := t.TempDir()
	one := filepath.Join(tmp, "one")
	if code, _, stderr := qconv("convert", src, one, "--max-shard-size", "100KB", "--progress", "never"); code != exitOK {
		t.Fatal(stderr)
	}
	dst := filepath.Join(tmp, "parts")
	for i := range 3 {
		t.Setenv("JOB_COMPLETION_INDEX", string(rune('0'+i)))
		code, stdout, stderr := qconv("convert", src, dst, "--max-shard-size", "100KB", "--shard", "auto/3", "--progress", "never")
		if code != exitOK || !strings.Contains(stdout, "converted part") {
			t.Fatalf("part %d: exit %d: %s%s", i, code, stdout, stderr)
		}
	}
	if code, _, stderr := qconv("convert", src, dst, "--max-shard-size", "100KB", "--finalize", "--progress", "never"); code != exitOK {
		t.Fatal(stderr)
	}
	want, _ := os.ReadDir(one)
	for _, e := range want {
		a, _ := os.ReadFile(filepath.Join(one, e.Name()))
		b, err := os.ReadFile(filepath.Join(dst, e.Name()))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between the one-process and the 3-part conversion", e.Name())
		}
	}
	t.Setenv("JOB_COMPLETION_INDEX", "")
	t.Setenv("SLURM_ARRAY_TASK_ID", "")
	if code, _, stderr := qconv("convert", src, filepath.Join(tmp, "x"), "--shard", "auto/3"); code != exitError || !strings.Contains(stderr, "JOB_COMPLETION_INDEX") {
		t.Errorf("--shard auto/3 without a scheduler: exit %d %s", code, stderr)
	}
}

func FuzzParsePart(f *testing.F) {
	for _, s := range []string{"0/1", "2/5", "auto/3", "/3", "5/5", "x/y", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parsePart(s, func(string) string { return "1" })
		if err == nil && (p.Count < 1 || p.Index < 0 || p.Index >= p.Count) {
			t.Errorf("parsePart(%q) = %+v", s, p)
		}
	})
}

// TestConvertDefaultWorkers runs this test binary with GOMAXPROCS=3 in the
// environment (TestHelperDefaultWorkers converts there): -j 0 means the
// CPUs the process may use as Go's runtime sees them at start (which
// follows GOMAXPROCS and cgroup CPU limits), not runtime.NumCPU.
func TestConvertDefaultWorkers(t *testing.T) {
	if os.Getenv("QCONV_WORKERS_HELPER") != "" {
		t.Skip("helper process")
	}
	dst := filepath.Join(t.TempDir(), "out")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperDefaultWorkers$")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=3", "QCONV_WORKERS_HELPER="+dst)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	_, after, ok := strings.Cut(string(out), "SUMMARY ")
	if !ok {
		t.Fatalf("helper printed no summary:\n%s", out)
	}
	var sum struct {
		Workers int `json:"workers"`
	}
	if err := json.NewDecoder(strings.NewReader(after)).Decode(&sum); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if sum.Workers != 3 {
		t.Errorf("with GOMAXPROCS=3, convert ran %d workers, want 3", sum.Workers)
	}
}

func TestHelperDefaultWorkers(t *testing.T) {
	dst := os.Getenv("QCONV_WORKERS_HELPER")
	if dst == "" {
		t.Skip("only as TestConvertDefaultWorkers's helper")
	}
	code, stdout, stderr := qconv("convert", "--json", "--progress=never", filepath.Join(models, "tiny-llama-bf16"), dst)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	fmt.Printf("SUMMARY %s\n", stdout)
}
