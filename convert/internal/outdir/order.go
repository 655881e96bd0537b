package outdir

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/qconv/qconv/formats/checkpoint"
)

// StateDictCompare orders tensor names as a model's state dict usually
// is: modules in natural order (numbers compared by value, so layers.2
// comes before layers.10), and within a module "weight" before "bias"
// before the rest. A checkpoint does not record its state-dict order, so
// this is an inference.
func StateDictCompare(a, b string) int {
	if c := naturalCmp(module(a), module(b)); c != 0 {
		return c
	}
	rank := func(s string) int {
		switch s[strings.LastIndexByte(s, '.')+1:] {
		case "weight":
			return 0
		case "bias":
			return 1
		}
		return 2
	}
	return cmp.Or(cmp.Compare(rank(a), rank(b)), naturalCmp(a, b))
}

// module returns name without its last dot-separated component.
func module(name string) string { return name[:max(0, strings.LastIndexByte(name, '.'))] }

// naturalCmp compares strings with runs of digits compared by value.
func naturalCmp(a, b string) int {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Or(cmp.Compare(len(na), len(nb)), strings.Compare(na, nb)); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digitRun(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

// Split splits tensors of the given byte sizes, in state-dict order, into
// shards of at most maxSize bytes as huggingface_hub's
// split_state_dict_into_shards_factory (behind save_pretrained) does, and
// returns the indexes of each shard's tensors: a new shard starts when the
// next tensor would overflow the current one, and a tensor larger than
// maxSize gets a shard of its own, appended while the current one stays
// open.
func Split(sizes []int64, maxSize int64) [][]int {
	var shards [][]int
	var cur []int
	var curSize int64
	for i, sz := range sizes {
		if sz > maxSize {
			shards = append(shards, []int{i})
			continue
		}
		if curSize+sz > maxSize {
			shards = append(shards, cur)
			cur, curSize = nil, 0
		}
		cur = append(cur, i)
		curSize += sz
	}
	if len(cur) > 0 {
		shards = append(shards, cur)
	}
	return shards
}

// FileName returns the name of output weight file i (0-based) of n:
// "model.safetensors" if n is 1, else "model-00001-of-0000N.safetensors".
func FileName(i, n int) string {
	if n == 1 {
		return checkpoint.WeightsFileName
	}
	return fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, n)
}
