// Package pyjson is an order-preserving JSON value tree whose output is
// byte-for-byte what Python's json module writes.
//
// qconv edits files that Python wrote (transformers' config.json and
// model.safetensors.index.json, bitsandbytes' quant-state blobs) and must
// write them back exactly as Python would. encoding/json cannot do that: it
// loses key order, reformats numbers (1e-06, 10000.0) and escapes differently.
// pyjson keeps every object's members in file order, keeps every number as
// its literal text, and marshals like
//
//	json.dumps(obj, indent=2, sort_keys=True)   // MarshalIndentSorted
//	json.dumps(obj)                             // MarshalCompact
//
// with Python's defaults (ensure_ascii=True, allow_nan=True).
//
// pyjson is NOT a general JSON library: it does not map JSON onto Go structs,
// it does not stream, and it holds the whole document in memory. It is meant
// for small documents (configs, indexes, quant states). Parsing is stricter
// than Python in one way: a duplicate key in an object is an error (Python
// silently keeps the last one), because a checkpoint whose config says two
// things at once must not be read as either.
package pyjson

import (
	"math"
	"strconv"
	"strings"
)

// Kind is the kind of a JSON value.
type Kind uint8

// The kinds of JSON values. The zero Kind is KindNull.
const (
	KindNull Kind = iota
	KindBool
	KindNumber
	KindString
	KindArray
	KindObject
)

// String returns the JSON name of the kind ("null", "bool", "number",
// "string", "array", "object").
func (k Kind) String() string {
	switch k {
	case KindNull:
		return "null"
	case KindBool:
		return "bool"
	case KindNumber:
		return "number"
	case KindString:
		return "string"
	case KindArray:
		return "array"
	case KindObject:
		return "object"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Value is one JSON value: null, a bool, a number (kept as its literal
// text), a string, an array or an object (members in insertion order).
//
// The zero Value is null. A nil *Value is treated as absent by the accessor
// methods (Get, Kind, ...), so lookups can be chained:
//
//	qt, ok := cfg.Get("quantization_config").Get("bnb_4bit_quant_type").AsString()
type Value struct {
	kind    Kind
	b       bool
	s       string // string text (UTF-8, lone surrogates as WTF-8) or number literal
	items   []*Value
	members []Member
}

// Member is one key/value pair of an object.
type Member struct {
	Key   string
	Value *Value
}

// Null returns a new null value.
func Null() *Value { return &Value{kind: KindNull} }

// Bool returns a new boolean value.
func Bool(b bool) *Value { return &Value{kind: KindBool, b: b} }

// String returns a new string value. s should be valid UTF-8; invalid bytes
// are written as \ufffd.
func String(s string) *Value { return &Value{kind: KindString, s: s} }

// Number returns a new number whose text is lit, written verbatim by the
// marshallers. lit must be a JSON number literal ("1e-06", "10000.0", "-3")
// or one of Python's NaN, Infinity, -Infinity; ValidNumber reports whether
// it is. Use Int or Float to build numbers from Go values.
func Number(lit string) *Value { return &Value{kind: KindNumber, s: lit} }

// Int returns a new number holding n, written as Python writes an int.
func Int(n int64) *Value { return Number(strconv.FormatInt(n, 10)) }

// Float returns a new number holding f, written as Python's json module
// writes a float (repr: "0.02", "1e-06", "10000.0", "NaN", "-Infinity").
func Float(f float64) *Value { return Number(FormatFloat(f)) }

// Array returns a new array holding items (nil items become null).
func Array(items ...*Value) *Value {
	v := &Value{kind: KindArray, items: make([]*Value, 0, len(items))}
	for _, it := range items {
		v.Append(it)
	}
	return v
}

// Object returns a new object holding members, in order. As in a Python
// dict, a repeated key keeps its first position and takes the last value.
//
// Object takes time linear in len(members); Set, Get and Delete take time
// linear in the size of the object.
func Object(members ...Member) *Value {
	v := &Value{kind: KindObject, members: make([]Member, 0, len(members))}
	pos := make(map[string]int, len(members))
	for _, m := range members {
		val := m.Value
		if val == nil {
			val = Null()
		}
		if i, ok := pos[m.Key]; ok {
			v.members[i].Value = val
			continue
		}
		pos[m.Key] = len(v.members)
		v.members = append(v.members, Member{Key: m.Key, Value: val})
	}
	return v
}

// Kind returns the kind of v; a nil v is KindNull.
func (v *Value) Kind() Kind {
	if v == nil {
		return KindNull
	}
	return v.kind
}

// IsNull reports whether v is null or nil.
func (v *Value) IsNull() bool { return v == nil || v.kind == KindNull }

// AsBool returns v's boolean and whether v is a bool.
func (v *Value) AsBool() (b, ok bool) {
	if v == nil || v.kind != KindBool {
		return false, false
	}
	return v.b, true
}

// AsString returns v's text and whether v is a string.
func (v *Value) AsString() (string, bool) {
	if v == nil || v.kind != KindString {
		return "", false
	}
	return v.s, true
}

// Literal returns the literal text of a number ("1e-06"), or "" if v is
// not a number.
func (v *Value) Literal() string {
	if v == nil || v.kind != KindNumber {
		return ""
	}
	return v.s
}

// Int64 returns v as an int64 if v is a number literal without fraction or
// exponent that fits in an int64 (as Python's int would hold it).
func (v *Value) Int64() (int64, bool) {
	if v == nil || v.kind != KindNumber {
		return 0, false
	}
	n, err := strconv.ParseInt(v.s, 10, 64)
	return n, err == nil
}

// Float64 returns v as a float64 (as Python's float() of the literal would),
// and whether v is a number. Python's NaN and ±Infinity are accepted.
func (v *Value) Float64() (float64, bool) {
	if v == nil || v.kind != KindNumber {
		return 0, false
	}
	switch v.s {
	case "NaN":
		return math.NaN(), true
	case "Infinity":
		return math.Inf(1), true
	case "-Infinity":
		return math.Inf(-1), true
	}
	f, err := strconv.ParseFloat(v.s, 64)
	if err != nil {
		// Out-of-range literals: Python's float() gives ±inf too.
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return f, true
		}
		return 0, false
	}
	return f, true
}

// Len returns the number of items of an array or members of an object, or 0.
func (v *Value) Len() int {
	if v == nil {
		return 0
	}
	switch v.kind {
	case KindArray:
		return len(v.items)
	case KindObject:
		return len(v.members)
	}
	return 0
}

// Items returns the items of an array (nil for other kinds). The slice is
// v's own; do not modify it.
func (v *Value) Items() []*Value {
	if v == nil || v.kind != KindArray {
		return nil
	}
	return v.items
}

// Index returns item i of an array, or nil if v is not an array or i is out
// of range.
func (v *Value) Index(i int) *Value {
	if v == nil || v.kind != KindArray || i < 0 || i >= len(v.items) {
		return nil
	}
	return v.items[i]
}

// Append adds item at the end of array v (nil becomes null). It does
// nothing if v is not an array.
func (v *Value) Append(item *Value) {
	if v == nil || v.kind != KindArray {
		return
	}
	if item == nil {
		item = Null()
	}
	v.items = append(v.items, item)
}

// Members returns the members of an object in order (nil for other kinds).
// The slice is v's own; do not modify it.
func (v *Value) Members() []Member {
	if v == nil || v.kind != KindObject {
		return nil
	}
	return v.members
}

// Get returns the value of key in object v, or nil if v is not an object
// or has no such key.
func (v *Value) Get(key string) *Value {
	if v == nil || v.kind != KindObject {
		return nil
	}
	for _, m := range v.members {
		if m.Key == key {
			return m.Value
		}
	}
	return nil
}

// Has reports whether object v has key.
func (v *Value) Has(key string) bool { return v.Get(key) != nil }

// Set sets key to val in object v: an existing member keeps its position, a
// new one goes last (as in a Python dict). A nil val becomes null. Set does
// nothing if v is not an object.
func (v *Value) Set(key string, val *Value) {
	if v == nil || v.kind != KindObject {
		return
	}
	if val == nil {
		val = Null()
	}
	for i := range v.members {
		if v.members[i].Key == key {
			v.members[i].Value = val
			return
		}
	}
	v.members = append(v.members, Member{Key: key, Value: val})
}

// Delete removes key from object v and reports whether it was there.
func (v *Value) Delete(key string) bool {
	if v == nil || v.kind != KindObject {
		return false
	}
	for i := range v.members {
		if v.members[i].Key == key {
			v.members = append(v.members[:i], v.members[i+1:]...)
			return true
		}
	}
	return false
}

// Clone returns a deep copy of v.
func (v *Value) Clone() *Value {
	if v == nil {
		return nil
	}
	c := &Value{kind: v.kind, b: v.b, s: v.s}
	if v.items != nil {
		c.items = make([]*Value, len(v.items))
		for i, it := range v.items {
			c.items[i] = it.Clone()
		}
	}
	if v.members != nil {
		c.members = make([]Member, len(v.members))
		for i, m := range v.members {
			c.members[i] = Member{Key: m.Key, Value: m.Value.Clone()}
		}
	}
	return c
}

// Equal reports whether v and w are the same tree: same kinds, same string
// bytes, same number literals ("1.0" and "1" differ), same members in the
// same order. A nil value equals null.
func (v *Value) Equal(w *Value) bool {
	if v.Kind() != w.Kind() {
		return false
	}
	switch v.Kind() {
	case KindNull:
		return true
	case KindBool:
		return v.b == w.b
	case KindNumber, KindString:
		return v.s == w.s
	case KindArray:
		if len(v.items) != len(w.items) {
			return false
		}
		for i := range v.items {
			if !v.items[i].Equal(w.items[i]) {
				return false
			}
		}
		return true
	case KindObject:
		if len(v.members) != len(w.members) {
			return false
		}
		for i := range v.members {
			if v.members[i].Key != w.members[i].Key || !v.members[i].Value.Equal(w.members[i].Value) {
				return false
			}
		}
		return true
	}
	return false
}

// ValidNumber reports whether lit is a JSON number literal or one of the
// non-finite literals Python's json module reads and writes (NaN, Infinity,
// -Infinity).
func ValidNumber(lit string) bool {
	switch lit {
	case "NaN", "Infinity", "-Infinity":
		return true
	}
	n := scanNumber(lit, 0)
	return n > 0 && n == len(lit)
}

// FormatFloat formats f as Python's json module writes a float: repr() for
// finite values (shortest round-trip digits, exponent form below 1e-4 and
// from 1e16, with at least two exponent digits), "NaN", "Infinity" and
// "-Infinity" otherwise.
func FormatFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // "-1.2345e-06"
	mant, expStr, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp < -4 || exp >= 16 {
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		es := strconv.Itoa(exp)
		if len(es) < 2 {
			es = "0" + es
		}
		return mant + "e" + sign + es
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}
