package verify

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
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
