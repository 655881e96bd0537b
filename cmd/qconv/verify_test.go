package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestVerifyCLI(t *testing.T) {
	src, quant := filepath.Join(models, "tiny-llama-bf16"), filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8")
	code, out, errOut := qconv("verify", src, quant)
	if code != exitOK || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	checkGolden(t, "verify/tiny-llama-bf16-nf4-dq-u8.txt", []byte(out))

	code, out, _ = qconv("verify", "--json", src, quant, "-j", "2")
	if code != exitOK {
		t.Fatalf("--json: exit %d", code)
	}
	var rep struct {
		OK     bool `json:"ok"`
		Totals struct {
			Quantized int      `json:"quantized"`
			SNR       *float64 `json:"snr_db"`
		} `json:"totals"`
		Tensors []struct {
			Name   string `json:"name"`
			Status string `json:"status"`
		} `json:"tensors"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK || rep.Totals.Quantized != 14 || rep.Totals.SNR == nil || *rep.Totals.SNR < 20 || len(rep.Tensors) != 21 {
		t.Errorf("--json: %+v", rep)
	}
}

func TestVerifyCLIExitCodes(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		out  string // in stdout (exit 0, 1) or stderr (exit 2)
	}{
		// A 4-bit checkpoint checked against a source it was not made from.
		{[]string{"verify", filepath.Join(models, "tiny-llama-bf16"), filepath.Join(models, "tiny-llama-b-f32-nf4-dq-u8")}, exitFindings, "FAILED"},
		// A dense checkpoint as QUANTIZED (a mixed-up path) must not pass.
		{[]string{"verify", filepath.Join(models, "tiny-llama-b-f32"), filepath.Join(models, "tiny-llama-bf16")}, exitError, "holds no 4-bit weight"},
		{[]string{"verify", filepath.Join(models, "tiny-llama-bf16"), filepath.Join(models, "tiny-llama-bf16")}, exitError, "qconv verify: " + filepath.Join(models, "tiny-llama-bf16") + ": holds no 4-bit weight"},
		{[]string{"verify", "-j", "0", "--progress", "always", filepath.Join(models, "tiny-llama-bf16"), filepath.Join(models, "tiny-llama-bf16-nf4-u8")}, exitOK, "OK"},
		{[]string{"verify", "-j", "-1", filepath.Join(models, "tiny-llama-bf16"), filepath.Join(models, "tiny-llama-bf16-nf4-u8")}, exitError, "-j -1: want 0 (all CPUs) or more"},
		{[]string{"verify", "--progress", "sometimes", "a", "b"}, exitError, `--progress "sometimes"`},
		{[]string{"verify", filepath.Join(models, "tiny-llama-bf16"), filepath.Join(models, "no-such-model")}, exitError, "no-such-model"},
		{[]string{"verify", filepath.Join(models, "tiny-llama-bf16-nf4-u8"), filepath.Join(models, "tiny-llama-bf16-nf4-u8")}, exitError, "original checkpoint is quantized"},
		{[]string{"verify", filepath.Join(models, "tiny-llama-bf16")}, exitError, "expected ORIGINAL and QUANTIZED"},
		{[]string{"verify", "--help"}, exitOK, "usage: qconv verify"},
	} {
		code, out, errOut := qconv(c.args...)
		text := out
		if code == exitError {
			text = errOut
		}
		if code != c.code || !strings.Contains(text, c.out) {
			t.Errorf("qconv %q: exit %d, want %d with %q in:\n%s", c.args, code, c.code, c.out, text)
		}
	}
}

// verify --json gives every tensor the same set of fields, whatever its
// kind and status, so that consumers can rely on them.
func TestVerifyJSONFields(t *testing.T) {
	code, out, errOut := qconv("verify", "--json", filepath.Join(models, "tiny-llama-bf16"), filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8"))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rep struct {
		Tensors []map[string]json.RawMessage `json:"tensors"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]json.RawMessage) string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		return strings.Join(ks, ",")
	}
	want := keys(rep.Tensors[0])
	kinds := map[string]bool{}
	for _, tr := range rep.Tensors {
		if got := keys(tr); got != want {
			t.Errorf("tensor %s has fields %s, tensor %s has %s", tr["name"], got, rep.Tensors[0]["name"], want)
		}
		kinds[string(tr["kind"])] = true
	}
	if len(kinds) != 2 {
		t.Errorf("kinds %v: want quantized and dense tensors both checked", kinds)
	}
	for _, f := range []string{"name", "kind", "status", "message", "quant_type", "blocksize", "bound_ratio", "differing", "shape"} {
		if !strings.Contains(","+want+",", ","+f+",") {
			t.Errorf("fields %s lack %s", want, f)
		}
	}
}
