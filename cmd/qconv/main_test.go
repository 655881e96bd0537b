package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ with the current output")

var models = filepath.Join("..", "..", "testdata", "golden", "models")

// qconv runs the CLI in-process.
func qconv(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// checkGolden compares got with testdata/<name>, or rewrites it with -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n%s", path, got)
	}
}

func TestInspectGolden(t *testing.T) {
	cases := []struct {
		golden string
		args   []string
	}{
		{"inspect/tiny-llama-f32.txt", []string{"inspect", filepath.Join(models, "tiny-llama-f32")}},
		{"inspect/tiny-llama-f32.json", []string{"inspect", "--json", filepath.Join(models, "tiny-llama-f32")}},
		{"inspect/tiny-llama-bf16-nf4-dq-u8.txt", []string{"inspect", filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8")}},
		{"inspect/tiny-llama-bf16-nf4-dq-u8.json", []string{"inspect", filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8"), "--json"}},
		{"inspect/tiny-llama-b-f32-fp4-u8-f16.txt", []string{"inspect", filepath.Join(models, "tiny-llama-b-f32-fp4-u8-f16")}},
		{"inspect/tiny-llama-bf16-file.txt", []string{"inspect", filepath.Join(models, "tiny-llama-bf16", "model.safetensors")}},
	}
	for _, c := range cases {
		t.Run(c.golden, func(t *testing.T) {
			code, out, errOut := qconv(c.args...)
			if code != exitOK || errOut != "" {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			checkGolden(t, c.golden, []byte(out))
		})
	}
}

// TestInspectFacts checks numbers in the output that come from the
// reference data itself, independent of the golden files.
func TestInspectFacts(t *testing.T) {
	_, out, _ := qconv("inspect", filepath.Join(models, "tiny-llama-f32"))
	// transformers' index for this checkpoint says total_parameters 500352
	// and total_size 2001408.
	for _, want := range []string{"parameters:  500352 (500.35K)", "(2001408 bytes)", "tensors:     21", "sharded, 10 files"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The 4-bit model has the same logical parameters as its source.
	_, out, _ = qconv("inspect", filepath.Join(models, "tiny-llama-f32-nf4-dq-u8"))
	if !strings.Contains(out, "parameters:  500352 ") || !strings.Contains(out, "quantized:   14 weights, 368640 parameters") {
		t.Errorf("nf4 output:\n%s", out)
	}
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	malformed := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(malformed, []byte("\xff\xff\xff\xff\xff\xff\xff\x7fjunk"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "no-such-model")
	cases := []struct {
		args             []string
		code             int
		stdout, stderr   string // substrings
		stdoutEmpty      bool
		stderrNotContain string
	}{
		{args: nil, code: 2, stderr: "Commands:"},
		{args: []string{"help"}, code: 0, stdout: "inspect"},
		{args: []string{"--help"}, code: 0, stdout: "Commands:"},
		{args: []string{"help", "inspect"}, code: 0, stdout: "usage: qconv inspect"},
		{args: []string{"help", "nope"}, code: 2, stderr: `unknown command "nope"`},
		{args: []string{"inspect", "--help"}, code: 0, stdout: "-json"},
		{args: []string{"inspect", "-h"}, code: 0, stdout: "usage: qconv inspect"},
		{args: []string{"nope"}, code: 2, stderr: `qconv: unknown command "nope"`},
		{args: []string{"--json"}, code: 2, stderr: "before the command"},
		{args: []string{"inspect"}, code: 2, stderr: "expected one PATH"},
		{args: []string{"inspect", "a", "b"}, code: 2, stderr: "expected one PATH, got 2"},
		{args: []string{"inspect", "--bogus", "x"}, code: 2, stderr: "qconv inspect: unknown flag --bogus\n"},
		{args: []string{"inspect", "--jsn", "x"}, code: 2, stderr: "qconv inspect: unknown flag --jsn; did you mean --json?"},
		{args: []string{"inspect", missing}, code: 2, stderr: "qconv inspect: " + missing + ": no such file", stdoutEmpty: true},
		{args: []string{"inspect", malformed, "--json"}, code: 2, stderr: "qconv inspect: " + malformed + ": not a safetensors file (ST002: ", stdoutEmpty: true},
		{args: []string{"inspect", "--", "--json"}, code: 2, stderr: "qconv inspect: --json: no such file"},
		{args: []string{"inspec", "x"}, code: 2, stderr: `qconv: unknown command "inspec"; did you mean "inspect"?`},
		{args: []string{"help", "conver"}, code: 2, stderr: `did you mean "convert"?`},
		{args: []string{"help", "help"}, code: 0, stdout: "usage: qconv help [command]"},
		{args: []string{"help"}, code: 0, stdout: "130  stopped by SIGINT"},
		{args: []string{"inspect", dir}, code: 2, stderr: "no model.safetensors or model.safetensors.index.json (found bad.safetensors"},
		{args: []string{"version"}, code: 0, stdout: "qconv dev ("},
		{args: []string{"--version"}, code: 0, stdout: "qconv dev ("},
		{args: []string{"version", "x"}, code: 2, stderr: "unexpected argument"},
	}
	for _, c := range cases {
		code, out, errOut := qconv(c.args...)
		if code != c.code || !strings.Contains(out, c.stdout) || !strings.Contains(errOut, c.stderr) || (c.stdoutEmpty && out != "") {
			t.Errorf("qconv %q: exit %d\nstdout: %s\nstderr: %s\nwant exit %d, stdout ~%q, stderr ~%q", c.args, code, out, errOut, c.code, c.stdout, c.stderr)
		}
		if strings.Contains(errOut, "goroutine") || strings.Contains(errOut, "panic") {
			t.Errorf("qconv %q printed a panic: %s", c.args, errOut)
		}
		// Errors are one line each.
		if c.code == exitError && !strings.HasSuffix(errOut, "\n") {
			t.Errorf("qconv %q: stderr not newline-terminated: %q", c.args, errOut)
		}
	}
}

func TestPanicIsReported(t *testing.T) {
	cmds := []*command{{name: "boom", run: func([]string, io.Writer, io.Writer) int { panic("bad thing") }}}
	var out, errOut bytes.Buffer
	if code := dispatch(context.Background(), cmds, []string{"boom"}, &out, &errOut); code != exitError {
		t.Errorf("exit %d", code)
	}
	if got := errOut.String(); !strings.HasPrefix(got, "qconv: internal error: bad thing; ") {
		t.Errorf("stderr %q", got)
	}
}

func TestParseFlags(t *testing.T) {
	cases := []struct {
		args []string
		pos  []string
		json bool
		out  string
		code int // -1: ok
	}{
		{[]string{"a", "--json", "b"}, []string{"a", "b"}, true, "", -1},
		{[]string{"-o", "x", "a"}, []string{"a"}, false, "x", -1},
		{[]string{"a", "--o=y", "-json=false"}, []string{"a"}, false, "y", -1},
		{[]string{"a", "-o", "--json"}, []string{"a"}, false, "--json", -1}, // a value may look like a flag
		{[]string{"--", "-o", "--json"}, []string{"-o", "--json"}, false, "", -1},
		{[]string{"a", "--json", "--", "-", "--"}, []string{"a", "-", "--"}, true, "", -1},
		{[]string{"-"}, []string{"-"}, false, "", -1},
		{[]string{"a", "-o"}, nil, false, "", exitError}, // missing value
		{[]string{"-x"}, nil, false, "", exitError},
		{[]string{"a", "-help"}, nil, false, "", exitOK},
	}
	for _, c := range cases {
		fs := newFlagSet("test")
		js := fs.Bool("json", false, "")
		o := fs.String("o", "", "")
		var out, errOut bytes.Buffer
		pos, code, ok := parseFlags(fs, "usage: test", c.args, &out, &errOut)
		if c.code >= 0 {
			if ok || code != c.code {
				t.Errorf("%q: ok %v code %d, want code %d", c.args, ok, code, c.code)
			}
			continue
		}
		if !ok || !slices.Equal(pos, c.pos) || *js != c.json || *o != c.out {
			t.Errorf("%q: pos %q json %v o %q ok %v (%s); want %q %v %q", c.args, pos, *js, *o, ok, errOut.String(), c.pos, c.json, c.out)
		}
	}
}

func TestErrorLine(t *testing.T) {
	for name, want := range map[string]string{
		"model.layers.0.q_proj.weight": "model.layers.0.q_proj.weight",
		"has space":                    `"has space"`,
		"a:b":                          `"a:b"`,
	} {
		if got := tensorName(name); got != want {
			t.Errorf("tensorName(%q) = %s, want %s", name, got, want)
		}
	}
}

func TestHumanUnits(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1000: "1.00 kB", 999_994: "999.99 kB", 999_995: "1.00 MB", 2001408: "2.00 MB", 2950000000: "2.95 GB", 1 << 60: "1.15 EB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{999: "999", 1000: "1.00K", 500352: "500.35K", 6738415616: "6.74B"} {
		if got := humanCount(n); got != want {
			t.Errorf("humanCount(%d) = %q, want %q", n, got, want)
		}
	}
}
