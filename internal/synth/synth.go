// Package synth writes synthetic safetensors checkpoints for the tests and
// benchmarks of convert and for qconv-bench: Llama-like tensor layouts
// filled with deterministic pseudo-random weights, streamed to disk in
// bounded memory so that multi-GB checkpoints can be made quickly.
//
// It is test tooling, not a model generator: the values have a plausible
// scale (roughly normal, σ≈0.02) but no structure.
package synth

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// A Tensor describes one tensor to generate.
type Tensor struct {
	Name  string
	DType dtype.DType // F32, BF16, F16 or an integer type (filled with small values)
	Shape []int64
	// Patch, if not nil, may change values before they are encoded:
	// vals holds elements [start, start+len(vals)) of the tensor.
	Patch func(start int64, vals []float32)
}

// NumElements returns the product of the shape.
func (t Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Llama returns the tensors of a Llama-style decoder in transformers'
// naming: embeddings, per layer four attention projections (with kv
// grouped-query heads), three MLP projections and two norms, the final
// norm and an untied lm_head, all of dtype dt.
func Llama(layers int, hidden, kv, inter, vocab int64, dt dtype.DType) []Tensor {
	ts := []Tensor{{Name: "model.embed_tokens.weight", DType: dt, Shape: []int64{vocab, hidden}}}
	for l := range layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		ts = append(ts,
			Tensor{Name: p + "self_attn.q_proj.weight", DType: dt, Shape: []int64{hidden, hidden}},
			Tensor{Name: p + "self_attn.k_proj.weight", DType: dt, Shape: []int64{kv, hidden}},
			Tensor{Name: p + "self_attn.v_proj.weight", DType: dt, Shape: []int64{kv, hidden}},
			Tensor{Name: p + "self_attn.o_proj.weight", DType: dt, Shape: []int64{hidden, hidden}},
			Tensor{Name: p + "mlp.gate_proj.weight", DType: dt, Shape: []int64{inter, hidden}},
			Tensor{Name: p + "mlp.up_proj.weight", DType: dt, Shape: []int64{inter, hidden}},
			Tensor{Name: p + "mlp.down_proj.weight", DType: dt, Shape: []int64{hidden, inter}},
			Tensor{Name: p + "input_layernorm.weight", DType: dt, Shape: []int64{hidden}},
			Tensor{Name: p + "post_attention_layernorm.weight", DType: dt, Shape: []int64{hidden}},
		)
	}
	return append(ts,
		Tensor{Name: "model.norm.weight", DType: dt, Shape: []int64{hidden}},
		Tensor{Name: "lm_head.weight", DType: dt, Shape: []int64{vocab, hidden}},
	)
}

// Llama7B returns the tensor layout of a Llama-2-7B-like model with the
// given number of layers (32 for the real size, 6.7e9 parameters): hidden
// 4096, MLP 11008, vocab 32000, no grouped-query attention.
func Llama7B(layers int, dt dtype.DType) []Tensor {
	return Llama(layers, 4096, 4096, 11008, 32000, dt)
}

const chunk = 1 << 16

// WriteFile writes the tensors to a safetensors file at path, with
// metadata {"format": "pt"}, in at most a few hundred KiB of memory. The
// values depend only on seed and each tensor's name.
func WriteFile(path string, tensors []Tensor, seed uint64) error {
	specs := make([]safetensors.TensorSpec, len(tensors))
	byName := make(map[string]Tensor, len(tensors))
	for i, t := range tensors {
		specs[i] = safetensors.TensorSpec{Name: t.Name, DType: t.DType, Shape: t.Shape}
		byName[t.Name] = t
	}
	plan, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := w.Write(plan.Header); err != nil {
		f.Close()
		return fmt.Errorf("synth: %w", err)
	}
	vals := make([]float32, chunk)
	buf := make([]byte, chunk*8)
	for _, ti := range plan.Tensors {
		t := byName[ti.Name]
		rng := rand.New(rand.NewPCG(seed, nameHash(t.Name)))
		n := t.NumElements()
		for start := int64(0); start < n; start += chunk {
			m := int(min(chunk, n-start))
			v := vals[:m]
			for i := range v {
				v[i] = float32(rng.NormFloat64() * 0.02)
			}
			if t.Patch != nil {
				t.Patch(start, v)
			}
			b := encode(buf, v, t.DType)
			if _, err := w.Write(b); err != nil {
				f.Close()
				return fmt.Errorf("synth: %w", err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("synth: %w", err)
	}
	return f.Close()
}

func nameHash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

func encode(buf []byte, v []float32, dt dtype.DType) []byte {
	sz := dt.Size()
	b := buf[:len(v)*sz]
	for i, f := range v {
		switch dt {
		case dtype.F32:
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
		case dtype.BF16:
			binary.LittleEndian.PutUint16(b[2*i:], dtype.F32ToBF16(f))
		case dtype.F16:
			binary.LittleEndian.PutUint16(b[2*i:], dtype.F32ToF16(f))
		case dtype.F64:
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(float64(f)))
		default: // integers and bools: small non-negative values
			x := uint64(math.Abs(float64(f))*1000) % 2
			for k := range sz {
				b[sz*i+k] = byte(x >> (8 * k))
			}
		}
	}
	return b
}

// WriteSharded writes the tensors to dir as transformers does for a
// sharded checkpoint: tensors in the given order split into files of at
// most maxShard bytes (a larger tensor gets its own file),
// model-00001-of-0000N.safetensors, and model.safetensors.index.json.
// With one shard it writes model.safetensors and no index.
func WriteSharded(dir string, tensors []Tensor, maxShard int64, seed uint64) error {
	return WriteShardedParallel(dir, tensors, maxShard, seed, 1)
}

// WriteShardedParallel is WriteSharded writing up to workers shard files at
// the same time (the bytes are the same: each value depends only on seed
// and its tensor's name). It takes a few hundred KiB of memory per worker.
func WriteShardedParallel(dir string, tensors []Tensor, maxShard int64, seed uint64, workers int) error {
	var shards [][]Tensor
	var cur []Tensor
	var size, total, params int64
	for _, t := range tensors {
		sz := t.NumElements() * int64(t.DType.Size())
		total += sz
		params += t.NumElements()
		if sz > maxShard {
			shards = append(shards, []Tensor{t})
			continue
		}
		if size+sz > maxShard && len(cur) > 0 {
			shards = append(shards, cur)
			cur, size = nil, 0
		}
		cur = append(cur, t)
		size += sz
	}
	if len(cur) > 0 {
		shards = append(shards, cur)
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	if len(shards) == 1 {
		return WriteFile(filepath.Join(dir, "model.safetensors"), tensors, seed)
	}
	var entries []checkpoint.IndexEntry
	names := make([]string, len(shards))
	for i, sh := range shards {
		names[i] = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		for _, t := range sh {
			entries = append(entries, checkpoint.IndexEntry{Tensor: t.Name, File: names[i]})
		}
	}
	errs := make([]error, len(shards))
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(workers, len(shards))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				errs[i] = WriteFile(filepath.Join(dir, names[i]), shards[i], seed)
			}
		}()
	}
	for i := range shards {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	b, err := checkpoint.NewIndex(params, total, entries).Marshal()
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, checkpoint.IndexFileName), b, 0o666)
}

// WriteConfig writes a minimal Llama config.json with the given dtype
// name ("bfloat16"), or none if dtypeName is empty.
func WriteConfig(dir, dtypeName string) error {
	s := "{\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n"
	if dtypeName != "" {
		s += "  \"dtype\": \"" + dtypeName + "\",\n"
	}
	s += "  \"model_type\": \"llama\",\n  \"tie_word_embeddings\": false\n}\n"
	return os.WriteFile(filepath.Join(dir, "config.json"), []byte(s), 0o666)
}
