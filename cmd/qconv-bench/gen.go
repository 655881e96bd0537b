package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/internal/synth"
)

// The synthetic input is internal/synth's Llama7B layout: hidden 4096, MLP
// 11008, vocab 32000, no grouped-query attention, untied lm_head, with
// seed 1 (the same bytes as convert/internal/synthgen -seed 1 writes).
const (
	llamaHidden = 4096
	llamaInter  = 11008
	llamaVocab  = 32000
)

// fixedElements is the number of elements outside the decoder layers:
// embed_tokens, lm_head and the final norm.
const fixedElements = 2*llamaVocab*llamaHidden + llamaHidden

// layerElements is the number of elements of one decoder layer: q, k, v,
// o (hidden × hidden each), gate, up, down (hidden × inter each) and two
// norms.
const layerElements = 4*llamaHidden*llamaHidden + 3*llamaHidden*llamaInter + 2*llamaHidden

// dtypeSize returns the element size of a -dtype value.
func dtypeSize(dt string) (int64, error) {
	switch strings.ToLower(dt) {
	case "bf16", "f16":
		return 2, nil
	case "f32":
		return 4, nil
	}
	return 0, fmt.Errorf("unknown -dtype %q (want bf16, f16 or f32)", dt)
}

// layersFor returns the number of 7B-like decoder layers (at least one)
// whose checkpoint comes closest to size bytes with elements of elem
// bytes, and that checkpoint's size in bytes (tensor data only).
func layersFor(size, elem int64) (layers int, bytes int64) {
	n := (size/elem - fixedElements + layerElements/2) / layerElements
	layers = int(max(n, 1))
	return layers, checkpointBytes(layers, elem)
}

// checkpointBytes returns the tensor data size of a checkpoint with the
// given number of layers.
func checkpointBytes(layers int, elem int64) int64 {
	return (fixedElements + int64(layers)*layerElements) * elem
}

// tensorCount returns the number of tensors of a checkpoint with the
// given number of layers.
func tensorCount(layers int) int { return 3 + 9*layers }

// input returns the directory of the synthetic input for c, generating it
// unless a complete one is there. A marker file beside the directory,
// written last, says it is complete.
func input(c *config, layers int) (string, error) {
	name := fmt.Sprintf("in-%s-%dL", strings.ToLower(c.dtype), layers)
	dir := filepath.Join(c.dir, name)
	marker := dir + ".complete"
	if !c.regen {
		if _, err := os.Stat(marker); err == nil {
			fmt.Fprintf(os.Stderr, "qconv-bench: reusing %s\n", dir)
			return dir, nil
		}
	}
	os.Remove(marker)
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	d, err := convert.ParseDType(c.dtype)
	if err != nil {
		return "", err
	}
	shard, err := convert.ParseSize(c.shard)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "qconv-bench: generating %s (%d layers, %s, shards of at most %s)...\n", dir, layers, c.dtype, c.shard)
	if err := synth.WriteShardedParallel(dir, synth.Llama7B(layers, d), shard, 1, c.genWorkers); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := synth.WriteConfig(dir, d.TorchName()); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := os.WriteFile(marker, nil, 0o666); err != nil {
		return "", err
	}
	return dir, nil
}

// weightFiles returns the total size and number of the .safetensors files
// in dir.
func weightFiles(dir string) (bytes int64, files int, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".safetensors") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return 0, 0, err
		}
		bytes += fi.Size()
		files++
	}
	return bytes, files, nil
}

// dirBytes returns the total size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
