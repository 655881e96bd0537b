// Command synthgen writes a synthetic Llama-like safetensors checkpoint
// (see internal/synth) for benchmarking qconv convert:
//
//	go run ./convert/internal/synthgen -o /tmp/llama7b -layers 32 -dtype bf16 -shard 5GB
//
// -layers 32 gives the size of Llama-2-7B (13.5 GB in bf16).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/synth"
)

func main() {
	out := flag.String("o", "", "output directory (required)")
	layers := flag.Int("layers", 32, "number of decoder layers (32: Llama-2-7B size)")
	dt := flag.String("dtype", "bf16", "dtype of the weights: bf16, f16 or f32")
	shard := flag.String("shard", "5GB", "largest shard file")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	d, err := convert.ParseDType(*dt)
	if err != nil || d == dtype.Invalid {
		fmt.Fprintln(os.Stderr, "synthgen: bad -dtype", *dt)
		os.Exit(2)
	}
	maxShard, err := convert.ParseSize(*shard)
	if err != nil {
		fmt.Fprintln(os.Stderr, "synthgen:", err)
		os.Exit(2)
	}
	if err := synth.WriteSharded(*out, synth.Llama7B(*layers, d), maxShard, *seed); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := synth.WriteConfig(*out, d.TorchName()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
