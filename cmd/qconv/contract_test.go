package main

// Tests of the CLI contract of issue 11 ("CLI for pipelines"): progress,
// exit codes, the error style and the audit's CI output, each through the
// command's entry point (run) or the built binary.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/qconv/qconv/convert"
)

// tinyTensorBytes is the size of the tensor data of tiny-llama-bf16
// (transformers' index for its f32 twin says total_size 2001408, half of
// it in bf16).
const tinyTensorBytes = 1000704

// Progress counts each input byte once: with double quantization (which
// reads every weight twice) done ends equal to total, and total is the
// input's tensor bytes.
func TestProgressCountsBytesOnce(t *testing.T) {
	var mu sync.Mutex
	var maxDone, lastTotal int64
	opts := convert.Options{Workers: 2, Progress: func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		maxDone, lastTotal = max(maxDone, done), total
	}}
	dst := filepath.Join(t.TempDir(), "out")
	if _, err := convert.Convert(context.Background(), filepath.Join(models, "tiny-llama-bf16"), dst, opts); err != nil {
		t.Fatal(err)
	}
	if maxDone != tinyTensorBytes || lastTotal != tinyTensorBytes {
		t.Errorf("progress ended at %d / %d, want %d / %d", maxDone, lastTotal, tinyTensorBytes, tinyTensorBytes)
	}
}

// The display: decimal units throughout, a bar on a wide terminal, the
// plain line (cut to fit) on a narrow one, and plain lines off a terminal.
func TestProgressDisplay(t *testing.T) {
	var b bytes.Buffer
	r := &progressReporter{w: &b, cmd: "convert", label: "converting", term: true, width: 120}
	r.update(1_230_000_000, 2_950_000_000)
	r.draw(2 * time.Second)
	got := b.String()
	if !strings.HasPrefix(got, "\rconverting  42% [") || !strings.Contains(got, "] 1.23 GB / 2.95 GB, 615 MB/s, ETA 3s") || len(strings.TrimSuffix(strings.TrimPrefix(got, "\r"), "\x1b[K")) != 119 {
		t.Errorf("wide terminal: %q", got)
	}
	b.Reset()
	r.width = 50
	r.draw(2 * time.Second)
	if got := b.String(); got != "\rconverting 1.23 GB / 2.95 GB (42%), 615 MB/s, ETA\x1b[K" {
		t.Errorf("narrow terminal: %q", got)
	}
	b.Reset()
	r.term, r.width = false, 0
	r.draw(2 * time.Second)
	if got := b.String(); got != "qconv convert: 1.23 GB / 2.95 GB (42%), 615 MB/s, ETA 3s\n" {
		t.Errorf("off a terminal: %q", got)
	}
	// Another line goes between, never into, the line drawn in place.
	b.Reset()
	r.term, r.width = true, 120
	r.draw(time.Second)
	r.printLine("[1/2] w [2] bf16 -> nf4, 4 B -> 2 B")
	if got := b.String(); !strings.HasSuffix(got, "\x1b[K\r\x1b[K[1/2] w [2] bf16 -> nf4, 4 B -> 2 B\n") {
		t.Errorf("line during progress: %q", got)
	}
}

// convert -v prints llama-quantize's per-tensor line, and the summary the
// whole model's bits per weight, the same number inspect gives.
func TestConvertVerbose(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "out")
	code, out, errOut := qconv("convert", filepath.Join(models, "tiny-llama-bf16"), dst, "-v", "-j", "4")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	line := regexp.MustCompile(`^\[ ?(\d+)/21\] (\S+) \[[0-9, ]+\] bf16 -> (nf4|bf16), [0-9.]+ [kM]?B -> [0-9.]+ [kM]?B$`)
	var order []string
	for _, l := range strings.Split(strings.TrimSpace(errOut), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("not a -v line: %q", l)
			continue
		}
		order = append(order, m[1])
	}
	// One line per tensor, in order, although workers finish them in any.
	if got := strings.Join(order, ","); got != "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21" {
		t.Errorf("tensor lines %s, want 1 to 21 in order:\n%s", got, errOut)
	}
	// The source's down_proj is bf16 [128, 352]: 90112 bytes.
	if !strings.Contains(errOut, "] model.layers.0.mlp.down_proj.weight [128, 352] bf16 -> nf4, 90.11 kB -> ") {
		t.Errorf("no down_proj line:\n%s", errOut)
	}
	// The output is the golden uint8 model, whose tensors are 471220 bytes
	// for 500352 logical parameters (transformers' total_parameters).
	want := fmt.Sprintf("(%.2f bpw)", 8*471220.0/500352)
	if !strings.Contains(out, want) {
		t.Errorf("summary lacks %q: %s", want, out)
	}
	_, inspectOut, _ := qconv("inspect", dst)
	if !strings.Contains(inspectOut, strings.Trim(want, "()")+" over the whole model") {
		t.Errorf("inspect disagrees with convert's %s:\n%s", want, inspectOut)
	}
	// --json gives it too.
	_, js, _ := qconv("convert", filepath.Join(models, "tiny-llama-bf16"), filepath.Join(t.TempDir(), "o"), "--json")
	var sum struct {
		BitsPerWeight float64 `json:"bits_per_weight"`
		Parameters    int64   `json:"parameters"`
	}
	if err := json.Unmarshal([]byte(js), &sum); err != nil || sum.Parameters != 500352 || fmt.Sprintf("(%.2f bpw)", sum.BitsPerWeight) != want {
		t.Errorf("--json: %+v, %v", sum, err)
	}
}

// inspect lists 4-bit weights with their logical shape, and gives the
// whole model's bits per weight.
func TestInspectLogical(t *testing.T) {
	code, out, _ := qconv("inspect", filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8"))
	if code != exitOK {
		t.Fatal(code)
	}
	// down_proj is [128, 352] in the source (tiny-llama-bf16).
	if !regexp.MustCompile(`model\.layers\.0\.mlp\.down_proj\.weight +nf4 \(U8\) +\[128, 352\] +22528 `).MatchString(out) {
		t.Errorf("no logical shape for down_proj:\n%s", out)
	}
	if want := fmt.Sprintf("parameters:  500352 (500.35K), %.2f bpw over the whole model", 8*471220.0/500352); !strings.Contains(out, want) {
		t.Errorf("lacks %q", want)
	}
}

// Every convert message about a part, --finalize or a kept work directory
// says what is true.
func TestConvertPartsMessages(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(models, "tiny-llama-bf16")
	dst := filepath.Join(tmp, "out")
	// --finalize with no part run: an error, and nothing left behind.
	code, _, errOut := qconv("convert", src, dst, "--finalize")
	if code != exitError || !strings.Contains(errOut, "qconv convert: nothing to finalize for "+dst) {
		t.Errorf("finalize without parts: exit %d: %s", code, errOut)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("finalize without parts left %v", entries)
	}
	// A part with no output file of a one-file plan says so.
	code, out, _ := qconv("convert", src, dst, "--shard", "1/4")
	if code != exitOK || !strings.Contains(out, "part 1/4: nothing to convert: the plan has 1 output file(s) for 4 parts") {
		t.Errorf("--shard 1/4: exit %d: %s", code, out)
	}
	code, out, _ = qconv("convert", src, dst, "--shard", "0/4")
	if code != exitOK || !strings.Contains(out, "converted part 0/4: model.safetensors; run with --finalize") {
		t.Errorf("--shard 0/4: exit %d: %s", code, out)
	}
	if code, _, errOut := qconv("convert", src, dst, "--finalize"); code != exitOK {
		t.Errorf("--finalize: exit %d: %s", code, errOut)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 2 || entries[0].Name() != ".out.qconv.json" || entries[1].Name() != "out" {
		t.Errorf("after --finalize: %v, want only out and its record", entries)
	}
}

// A directory with only PyTorch pickles gets a hint; a non-safetensors file
// is called one, with the audit's rule ID.
func TestInputHints(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), []byte("PK"), 0o644)
	code, _, errOut := qconv("convert", dir, filepath.Join(t.TempDir(), "o"))
	if code != exitError || !strings.Contains(errOut, "qconv convert: "+dir+": no model.safetensors or model.safetensors.index.json (found pytorch_model.bin: PyTorch pickle weights") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	code, _, errOut = qconv("inspect", filepath.Join(models, "tiny-llama-bf16", "config.json"))
	if code != exitError || !strings.Contains(errOut, "config.json: not a safetensors file (ST002: header length 7165896756295633531") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	// A Git LFS pointer left by a clone without git-lfs.
	lfs := filepath.Join(t.TempDir(), "model.safetensors")
	os.WriteFile(lfs, []byte("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 4080218931\n"), 0o644)
	code, _, errOut = qconv("convert", lfs, filepath.Join(t.TempDir(), "o"))
	if code != exitError || errOut != "qconv convert: "+lfs+": a Git LFS pointer, not the file itself; fetch it (git lfs pull, or huggingface-cli download)\n" {
		t.Errorf("LFS pointer: exit %d: %q", code, errOut)
	}

	// A config.json that is not JSON, as convert and audit say it.
	badConfig := t.TempDir()
	b, _ := os.ReadFile(filepath.Join(models, "tiny-llama-bf16", "model.safetensors"))
	os.WriteFile(filepath.Join(badConfig, "model.safetensors"), b, 0o644)
	os.WriteFile(filepath.Join(badConfig, "config.json"), []byte(`{"a": 1,,}`), 0o644)
	_, _, errOut = qconv("convert", badConfig, filepath.Join(t.TempDir(), "o"))
	if want := "qconv convert: " + filepath.Join(badConfig, "config.json") + ": not valid JSON (offset 8: "; !strings.HasPrefix(errOut, want) {
		t.Errorf("bad config.json: %q, want %q...", errOut, want)
	}
	_, out, _ := qconv("audit", badConfig)
	if !strings.Contains(out, "CFG001: cannot read config.json: offset 8: ") {
		t.Errorf("audit of a bad config.json: %q", out)
	}

	// One line, "qconv CMD: ...", no internal prefixes.
	for _, args := range [][]string{
		{"convert", badConfig, filepath.Join(t.TempDir(), "o")},
		{"inspect", badConfig},
		{"dequant", "--dtype", "int4", "a", "b"},
		{"audit", "no-such-path"},
		{"convert", dir + "/none", filepath.Join(t.TempDir(), "o")},
	} {
		_, _, errOut := qconv(args...)
		first := strings.SplitN(errOut, "\n", 2)[0]
		if !strings.HasPrefix(first, "qconv "+args[0]+": ") || regexp.MustCompile(`(convert|audit|pyjson|safetensors|stat|open): `).MatchString(strings.TrimPrefix(first, "qconv "+args[0]+": ")) {
			t.Errorf("qconv %q: %q", args, first)
		}
	}
}

// audit for CI: failed paths in every format, --select/--disable with
// prefixes, several --explain IDs, -q.
func TestAuditCI(t *testing.T) {
	dir := t.TempDir()
	mixedFixture(t, dir)
	bad := filepath.Join(dir, "mixed")
	missing := filepath.Join(t.TempDir(), "missing")

	code, out, errOut := qconv("audit", "--format", "json", bad, missing)
	var js struct {
		Findings []struct{ Rule string }
		Errors   []struct{ Path, Message string }
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || code != exitError {
		t.Fatalf("exit %d, %v: %s %s", code, err, out, errOut)
	}
	if len(js.Errors) != 1 || js.Errors[0].Path != missing || js.Errors[0].Message != "no such file or directory" || len(js.Findings) == 0 {
		t.Errorf("json: %+v", js)
	}

	code, out, _ = qconv("audit", "--format", "sarif", bad, missing)
	if code != exitError {
		t.Errorf("sarif: exit %d", code)
	}
	validateSARIF(t, []byte(out))
	if !strings.Contains(out, `"executionSuccessful": false`) || !strings.Contains(out, missing+": no such file or directory") {
		t.Errorf("sarif lacks the failed path:\n%s", out)
	}
	code, out, _ = qconv("audit", "--format", "github", missing)
	if code != exitError || !strings.HasPrefix(out, "::error file=") {
		t.Errorf("github: exit %d: %s", code, out)
	}
	code, out, _ = qconv("audit", "--format", "gitlab", missing)
	if code != exitError || !strings.Contains(out, `"check_name": "qconv-audit-path"`) || !strings.Contains(out, `"path": "`+missing+`"`) {
		t.Errorf("gitlab: exit %d: %s", code, out)
	}
	// The text summary says the audit is incomplete; -q leaves it out.
	_, _, errOut = qconv("audit", missing)
	if !strings.Contains(errOut, "1 path could not be audited, so the audit is incomplete") {
		t.Errorf("text: %s", errOut)
	}
	_, _, errOut = qconv("audit", "-q", bad)
	if strings.Contains(errOut, "errors,") {
		t.Errorf("-q printed the summary: %s", errOut)
	}

	ruleSet := func(args ...string) map[string]bool {
		t.Helper()
		_, out, errOut := qconv(append([]string{"audit", "--format", "json", "--fail-on", "never"}, args...)...)
		var js struct{ Findings []struct{ Rule string } }
		if err := json.Unmarshal([]byte(out), &js); err != nil {
			t.Fatalf("%q: %v: %s", args, err, errOut)
		}
		set := map[string]bool{}
		for _, f := range js.Findings {
			set[f.Rule] = true
		}
		return set
	}
	all := ruleSet(bad)
	if len(all) < 3 {
		t.Fatalf("findings of %s: %v", bad, all)
	}
	for rule := range ruleSet("--select", "BNB", bad) {
		if !strings.HasPrefix(rule, "BNB") {
			t.Errorf("--select BNB reported %s", rule)
		}
	}
	if got := ruleSet("--select", "bnb0", "--disable", "BNB001", bad); got["BNB001"] {
		t.Errorf("--disable BNB001 reported it: %v", got)
	}
	if got := ruleSet("--disable", "BNB", bad); len(got) == len(all) {
		t.Errorf("--disable BNB changed nothing: %v", got)
	}
	code, _, errOut = qconv("audit", "--select", "BNX001", bad)
	if code != exitError || !strings.Contains(errOut, `no rule ID is or begins with "BNX001"; did you mean BNB001?`) {
		t.Errorf("--select BNX001: exit %d: %s", code, errOut)
	}

	code, _, errOut = qconv("audit", "--select", "DEEP", bad)
	if code != exitError || !strings.Contains(errOut, "--select DEEP: only deep rules, which run with --deep; add --deep") {
		t.Errorf("--select DEEP without --deep: exit %d: %s", code, errOut)
	}
	if code, _, errOut = qconv("audit", "--select", "DEEP", "--deep", bad); code == exitError {
		t.Errorf("--select DEEP --deep: exit %d: %s", code, errOut)
	}

	code, out, _ = qconv("audit", "--explain", "ST002", "BNB001,CFG001")
	if code != exitOK || !strings.HasPrefix(out, "ST002 (error): ") || !strings.Contains(out, "\n\nBNB001 (") || !strings.Contains(out, "\n\nCFG001 (") {
		t.Errorf("--explain several: exit %d:\n%s", code, out)
	}
}

// validateSARIF checks log against the official SARIF 2.1.0 schema in
// audit/testdata.
func validateSARIF(t *testing.T, log []byte) {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "audit", "testdata", "sarif", "sarif-schema-2.1.0.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("sarif-schema-2.1.0.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("sarif-schema-2.1.0.json")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if err := sch.Validate(inst); err != nil {
		t.Errorf("not valid SARIF 2.1.0: %v", err)
	}
}

// A signal cancels the command's context; the exit code is 130 for SIGINT
// and 143 for SIGTERM, whatever the command returns after cleaning up.
func TestSignalExitCodes(t *testing.T) {
	for sig, want := range map[os.Signal]int{os.Interrupt: exitSIGINT, syscall.SIGTERM: exitSIGTERM} {
		cleaned := false
		cmds := []*command{{name: "wait", runCtx: func(ctx context.Context, _ []string, _, _ io.Writer) int {
			<-ctx.Done()
			cleaned = true
			return exitError
		}}}
		sigs := make(chan os.Signal, 1)
		sigs <- sig
		stopped := false
		var errOut bytes.Buffer
		code := runSignals(cmds, []string{"wait"}, io.Discard, &errOut, sigs, func() { stopped = true })
		if code != want || !cleaned || !stopped || !strings.Contains(errOut.String(), "stopping and cleaning up") {
			t.Errorf("%v: exit %d, cleaned %v, stopped %v, stderr %q; want %d", sig, code, cleaned, stopped, errOut.String(), want)
		}
	}
	// No signal: the command's own code.
	cmds := []*command{{name: "ok", run: func([]string, io.Writer, io.Writer) int { return exitFindings }}}
	if code := runSignals(cmds, []string{"ok"}, io.Discard, io.Discard, make(chan os.Signal), func() {}); code != exitFindings {
		t.Errorf("no signal: exit %d", code)
	}
}

// The built binary, interrupted in a long audit --deep of a sparse 4 GiB
// file, exits 130 after SIGINT and 143 after SIGTERM.
func TestBinarySignals(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no SIGINT/SIGTERM delivery to a child on Windows")
	}
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "qconv")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	big := filepath.Join(dir, "big.safetensors")
	const n = 1 << 30 // F32 elements: 4 GiB of (sparse) zeros
	header := fmt.Sprintf(`{"w":{"dtype":"F32","shape":[%d],"data_offsets":[0,%d]}}`, n, 4*n)
	for len(header)%8 != 0 {
		header += " "
	}
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	binary.Write(f, binary.LittleEndian, uint64(len(header)))
	f.WriteString(header)
	if err := f.Truncate(int64(8 + len(header) + 4*n)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for sig, want := range map[syscall.Signal]int{syscall.SIGINT: exitSIGINT, syscall.SIGTERM: exitSIGTERM} {
		cmd := exec.Command(bin, "audit", "--deep", "--progress", "always", big)
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		cmd.Process.Signal(sig)
		start := time.Now()
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != want {
			t.Errorf("%v: exit %d, want %d; stderr:\n%s", sig, code, want, errOut.String())
		}
		if !strings.Contains(errOut.String(), "qconv audit: interrupted: context canceled\n") {
			t.Errorf("%v: stderr does not say the audit was interrupted:\n%s", sig, errOut.String())
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%v: took %v to stop", sig, d)
		}
	}
}

// The convert package's notes come out in the command's style, one line
// each: "qconv convert: note: ...".
func TestConvertNotes(t *testing.T) {
	src := t.TempDir()
	for _, name := range []string{"model.safetensors", "config.json"} {
		b, err := os.ReadFile(filepath.Join(models, "tiny-llama-bf16", name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(src, name), b, 0o644)
	}
	os.WriteFile(filepath.Join(src, "pytorch_model.bin"), []byte("PK"), 0o644)
	code, _, errOut := qconv("convert", src, filepath.Join(t.TempDir(), "out"), "-j", "0")
	if code != exitOK || errOut != "qconv convert: note: not copied: pytorch_model.bin (weights in another format; the output has the 4-bit safetensors weights)\n" {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestLineWriter(t *testing.T) {
	var got []string
	w := &lineWriter{line: func(l string) { got = append(got, l) }}
	fmt.Fprint(w, "a\nb")
	fmt.Fprint(w, "c\n\nd")
	if strings.Join(got, "|") != "a|bc|" {
		t.Errorf("lines %q", got)
	}
}

// FuzzParseFlags: whatever the arguments (NUL-separated in the input),
// parseFlags does not panic, and on success returns the arguments that
// are not flags or flag values, in order.
func FuzzParseFlags(f *testing.F) {
	for _, s := range []string{"a\x00--json\x00b", "-o\x00x", "--o=y\x00-json=false", "--\x00-o", "-j\x00-1", "--jsn", "-", "--=x", "---x", "-h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := strings.Split(s, "\x00")
		fs := newFlagSet("fuzz")
		fs.Bool("json", false, "")
		fs.String("o", "", "")
		fs.Int("j", 0, "")
		pos, code, ok := parseFlags(fs, "usage: fuzz", args, io.Discard, io.Discard)
		if !ok {
			if code != exitOK && code != exitError {
				t.Errorf("%q: code %d", args, code)
			}
			return
		}
		// Every positional is one of the arguments, in order.
		i := 0
		for _, p := range pos {
			for i < len(args) && args[i] != p {
				i++
			}
			if i == len(args) {
				t.Fatalf("%q: positional %q not among the arguments in order (%q)", args, p, pos)
			}
			i++
		}
	})
}
