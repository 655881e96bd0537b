package rules

import (
	"fmt"
	"sort"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/dtype"
)

// bnbConfig returns the checkpoint's bitsandbytes 4-bit config, or nil if
// config.json is absent, unreadable, or describes something else.
func bnbConfig(c *audit.Checkpoint) *audit.BnbConfig {
	if b := c.Config.Bnb(); b.Is4bit() {
		return b
	}
	return nil
}

// modelDType returns the dtype config.json declares for the model.
func modelDType(c *audit.Checkpoint) (d dtype.DType, key string, ok bool) {
	s, key, ok := c.Config.ModelDType()
	if !ok {
		return dtype.Invalid, "", false
	}
	d, ok = dtype.FromTorchName(s)
	return d, key, ok && d.IsFloat()
}

// is16 reports whether d is a 16-bit float type.
func is16(d dtype.DType) bool { return d == dtype.BF16 || d == dtype.F16 }

// denseFloats returns the checkpoint's dense floating-point tensors.
func denseFloats(c *audit.Checkpoint) []*audit.Tensor {
	var out []*audit.Tensor
	for _, t := range c.DenseTensors() {
		if t.DType.IsFloat() {
			out = append(out, t)
		}
	}
	return out
}

// tally is a count of tensors and bytes, with the first tensor as an
// example.
type tally struct {
	n       int
	bytes   int64
	example *audit.Tensor
}

func (t *tally) add(x *audit.Tensor) {
	if t.example == nil {
		t.example = x
	}
	t.n++
	t.bytes += x.Size()
}

// byDType groups tensors by dtype, in dtype order.
func byDType(ts []*audit.Tensor) ([]dtype.DType, map[dtype.DType]*tally) {
	m := map[dtype.DType]*tally{}
	var keys []dtype.DType
	for _, t := range ts {
		if m[t.DType] == nil {
			m[t.DType] = &tally{}
			keys = append(keys, t.DType)
		}
		m[t.DType].add(t)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys, m
}

// humanBytes formats n in decimal units, as every size qconv prints: "512
// B", "3.00 kB", "3.80 GB".
func humanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit-0.005 && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.2f %s", v, []string{"kB", "MB", "GB", "TB", "PB"}[i])
}

// weightsAre returns "1 packed weight is" or "3 packed weights are".
func weightsAre(n int) string {
	if n == 1 {
		return "1 packed weight is"
	}
	return fmt.Sprintf("%d packed weights are", n)
}

// agree returns "1 <noun> <one>" or "n <noun>s <many>", such as "1 tensor
// is" and "3 tensors are".
func agree(n int, noun, one, many string) string {
	if n == 1 {
		return "1 " + noun + " " + one
	}
	return fmt.Sprintf("%d %ss %s", n, noun, many)
}
