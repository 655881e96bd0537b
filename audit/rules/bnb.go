package rules

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/pyjson"
)

// packedGroups returns the checkpoint's groups whose packed weight and a
// quant state exist; most BNB rules look only at those.
func packedGroups(c *audit.Checkpoint) []*audit.QuantGroup {
	var out []*audit.QuantGroup
	for _, g := range c.QuantGroups() {
		if g.Packed != nil && len(g.States) > 0 {
			out = append(out, g)
		}
	}
	return out
}

// numel is the product of shape, and false on overflow or a negative
// dimension.
func numel(shape []int64) (int64, bool) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, false
		}
		n *= d
	}
	return n, true
}

// quantType returns the group's quant type: from the parsed state, else
// from the state key.
// It fails when the two disagree (BNB005).
func quantType(g *audit.QuantGroup) (bnb.QuantType, bool) {
	kt, ok := bnb.ParseQuantType(g.QuantType())
	if g.State != nil {
		if ok && kt != g.State.QuantType {
			return 0, false
		}
		return g.State.QuantType, true
	}
	return kt, ok
}

// readF32s reads a small F32 tensor of exactly n elements.
func readF32s(c *audit.Checkpoint, t *audit.Tensor, n int) ([]float32, error) {
	b, err := c.ReadSmall(t, int64(4*n))
	if err != nil {
		return nil, err
	}
	if len(b) != 4*n {
		return nil, fmt.Errorf("tensor %q has %d bytes, want %d", t.Name, len(b), 4*n)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

// isShape reports whether t has dtype d and shape want.
func isShape(t *audit.Tensor, d dtype.DType, want ...int64) bool {
	if t.DType != d || len(t.Shape) != len(want) {
		return false
	}
	for i := range want {
		if t.Shape[i] != want[i] {
			return false
		}
	}
	return true
}

// blocksizeFields returns the state JSON's "blocksize" and
// "nested_blocksize" when they are integers; ok reports presence.
func blocksizeFields(g *audit.QuantGroup) (bs int64, bsOK bool, nbs int64, nbsOK bool) {
	if g.StateJSON == nil {
		return
	}
	v, err := pyjson.Parse(g.StateJSON)
	if err != nil {
		return
	}
	bs, bsOK = v.Get("blocksize").Int64()
	nbs, nbsOK = v.Get("nested_blocksize").Int64()
	return
}

// blocksizeError reports whether the group's state failed to parse only
// because of a block size value, which BNB011 reports.
func blocksizeError(g *audit.QuantGroup) bool {
	var qe *bnb.QuantStateError
	if !errors.As(g.StateErr, &qe) {
		return false
	}
	bs, bsOK, nbs, nbsOK := blocksizeFields(g)
	switch qe.Field {
	case "blocksize":
		return bsOK && !bnb.ValidBlocksize(int(bs))
	case "nested_blocksize":
		return nbsOK && nbs != bnb.NestedBlocksize
	}
	return false
}

// fixCommand is the repair advice for packed weights in a float storage.
const fixCommand = "qconv audit --fix DST PATH"
