package audit

import (
	"sort"
	"strings"

	"github.com/qconv/qconv/formats/bnb"
)

// Naming of the tensors bitsandbytes saves next to a packed 4-bit weight
// W: W.absmax, W.quant_map, W.nested_absmax, W.nested_quant_map and
// W.quant_state.bitsandbytes__<nf4|fp4>.
const (
	StateInfix  = ".quant_state."  // between W and the quant-state kind
	StatePrefix = "bitsandbytes__" // the kind is StatePrefix + quant type
)

// MaxStateBytes is the largest quant-state JSON blob the auditor reads. A
// real one is under 300 bytes.
const MaxStateBytes = 64 << 10

// QuantGroup is a packed 4-bit weight and the tensors saved beside it.
// Any tensor may be missing (nil), which rules report.
type QuantGroup struct {
	// Base is the packed weight's name, such as
	// "model.layers.0.mlp.down_proj.weight".
	Base   string
	Packed *Tensor
	// States are the Base+".quant_state.*" tensors; bitsandbytes needs
	// exactly one.
	States         []*Tensor
	Absmax         *Tensor
	QuantMap       *Tensor
	NestedAbsmax   *Tensor
	NestedQuantMap *Tensor

	// The fields below are set only when there is exactly one state.

	// StateKind is the key suffix of States[0] ("bitsandbytes__nf4").
	StateKind string
	// StateJSON is the bytes of States[0], if they could be read.
	StateJSON []byte
	// State is StateJSON parsed; nil if StateErr != nil or no single
	// state.
	State *bnb.QuantState
	// StateErr says why States[0] could not be read or parsed.
	StateErr error
}

// QuantType returns the quant type named by the state key ("nf4" for
// bitsandbytes__nf4), or "" if the key does not have the bitsandbytes__
// form.
func (g *QuantGroup) QuantType() string {
	if t, ok := strings.CutPrefix(g.StateKind, StatePrefix); ok {
		return t
	}
	return ""
}

// Tensors returns the group's tensors that exist, packed weight first.
func (g *QuantGroup) Tensors() []*Tensor {
	var out []*Tensor
	for _, t := range []*Tensor{g.Packed, g.Absmax, g.QuantMap, g.NestedAbsmax, g.NestedQuantMap} {
		if t != nil {
			out = append(out, t)
		}
	}
	return append(out, g.States...)
}

// siblingBase splits a quant-state sibling name into its packed weight's
// name and the sibling's role; ok is false for other names.
func siblingBase(name string) (base, role string, ok bool) {
	if i := strings.LastIndex(name, StateInfix); i > 0 {
		return name[:i], "quant_state", true
	}
	for _, suf := range []string{".nested_absmax", ".nested_quant_map", ".absmax", ".quant_map"} {
		if b, found := strings.CutSuffix(name, suf); found && b != "" {
			return b, suf[1:], true
		}
	}
	return "", "", false
}

// QuantGroups returns the checkpoint's packed 4-bit weights, sorted by
// name. A group exists for every name W that has at least one sibling
// (W.absmax, W.quant_map, W.nested_*, W.quant_state.*); the packed weight
// itself may be missing. Reading the groups
// reads the quant-state JSON tensors (a few hundred bytes each).
func (c *Checkpoint) QuantGroups() []*QuantGroup {
	if c.grouped {
		return c.groups
	}
	c.grouped = true
	byBase := map[string]*QuantGroup{}
	for _, t := range c.Tensors() {
		base, role, ok := siblingBase(t.Name)
		if !ok {
			continue
		}
		g := byBase[base]
		if g == nil {
			g = &QuantGroup{Base: base}
			byBase[base] = g
		}
		set := func(p **Tensor) {
			if *p == nil {
				*p = t
			}
		}
		switch role {
		case "quant_state":
			// One per name; a tensor held by two files is IX's business.
			if len(g.States) == 0 || g.States[len(g.States)-1].Name != t.Name {
				g.States = append(g.States, t)
			}
		case "absmax":
			set(&g.Absmax)
		case "quant_map":
			set(&g.QuantMap)
		case "nested_absmax":
			set(&g.NestedAbsmax)
		case "nested_quant_map":
			set(&g.NestedQuantMap)
		}
	}
	for _, g := range byBase {
		g.Packed = c.Tensor(g.Base)
		sort.Slice(g.States, func(i, j int) bool { return g.States[i].Name < g.States[j].Name })
		if len(g.States) == 1 { // with several, none is authoritative (BNB003)
			s := g.States[0]
			g.StateKind = s.Name[len(g.Base)+len(StateInfix):]
			g.StateJSON, g.StateErr = c.ReadSmall(s, MaxStateBytes)
			if g.StateErr == nil {
				qs, err := bnb.ParseQuantState(g.StateJSON)
				if err != nil {
					g.StateErr = err
				} else {
					g.State = &qs
				}
			}
		}
		c.groups = append(c.groups, g)
	}
	sort.Slice(c.groups, func(i, j int) bool { return c.groups[i].Base < c.groups[j].Base })
	return c.groups
}

// InQuantGroup reports whether the tensor called name is a packed 4-bit
// weight or one of the tensors saved beside it.
func (c *Checkpoint) InQuantGroup(name string) bool {
	if _, _, ok := siblingBase(name); ok {
		return true
	}
	i := sort.Search(len(c.QuantGroups()), func(i int) bool { return c.groups[i].Base >= name })
	return i < len(c.groups) && c.groups[i].Base == name
}

// IsQuantized reports whether the checkpoint holds any packed 4-bit
// weight (any quant-state tensor, even where a weight has several).
func (c *Checkpoint) IsQuantized() bool {
	for _, g := range c.QuantGroups() {
		if len(g.States) > 0 {
			return true
		}
	}
	return false
}

// DenseTensors returns the tensors that are not part of a 4-bit group.
func (c *Checkpoint) DenseTensors() []*Tensor {
	var out []*Tensor
	for _, t := range c.Tensors() {
		if c.InQuantGroup(t.Name) {
			continue
		}
		out = append(out, t)
	}
	return out
}
