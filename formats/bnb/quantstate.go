package bnb

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"

	"github.com/qconv/qconv/internal/pyjson"
)

// QuantState is the non-tensor part of a bitsandbytes 4-bit quant state:
// the JSON object stored as the U8 tensor
// "<weight>.quant_state.bitsandbytes__<quant type>" next to every quantized
// weight (spec §5.2). The tensors of the state (absmax, quant_map and, with
// double quantization, nested_absmax and nested_quant_map) are stored under
// their own keys and are not part of it.
type QuantState struct {
	QuantType QuantType // "quant_type"
	Blocksize int       // "blocksize" of the 4-bit quantization
	DType     string    // "dtype": "bfloat16", "float16" or "float32", the dtype of the quantized tensor
	Shape     []int64   // "shape" of the original (unpacked) weight

	// DoubleQuant reports whether the absmax values are double quantized.
	// The remaining fields are written only if it is set.
	DoubleQuant     bool
	NestedBlocksize int     // "nested_blocksize", always NestedBlocksize when written by bitsandbytes
	NestedDType     string  // "nested_dtype", always "float32" when written by bitsandbytes
	NestedOffset    float32 // "nested_offset", the mean subtracted before double quantization
}

// MarshalPython returns the JSON bytes bitsandbytes stores for s, identical to
// Python's json.dumps of QuantState.as_dict's non-tensor items: keys in the
// order quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype,
// nested_offset, separators ", " and ": ", ASCII only, and nested_offset
// printed as Python's repr of the float32 value widened to a double (for
// example 0.051932308822870255 or 1e-05; NaN and Infinity as Python writes
// them).
func (s QuantState) MarshalPython() []byte {
	b := make([]byte, 0, 192)
	b = append(b, `{"quant_type": `...)
	b = pyjson.AppendString(b, s.QuantType.String())
	b = append(b, `, "blocksize": `...)
	b = strconv.AppendInt(b, int64(s.Blocksize), 10)
	b = append(b, `, "dtype": `...)
	b = pyjson.AppendString(b, s.DType)
	b = append(b, `, "shape": [`...)
	for i, d := range s.Shape {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = strconv.AppendInt(b, d, 10)
	}
	b = append(b, ']')
	if s.DoubleQuant {
		b = append(b, `, "nested_blocksize": `...)
		b = strconv.AppendInt(b, int64(s.NestedBlocksize), 10)
		b = append(b, `, "nested_dtype": `...)
		b = pyjson.AppendString(b, s.NestedDType)
		b = append(b, `, "nested_offset": `...)
		b = appendPyFloat(b, float64(s.NestedOffset))
	}
	return append(b, '}')
}

// appendPyFloat appends Python's repr of v (as json.dumps writes floats).
func appendPyFloat(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "Infinity"...)
	case math.IsInf(v, -1):
		return append(b, "-Infinity"...)
	}
	// Python's repr uses the shortest round-tripping digits, in positional
	// notation when 1e-4 <= |v| < 1e16 and in exponent notation (at least two
	// exponent digits, as Go's 'e' format) otherwise.
	if a := math.Abs(v); a != 0 && (a < 1e-4 || a >= 1e16) {
		return strconv.AppendFloat(b, v, 'e', -1, 64)
	}
	start := len(b)
	b = strconv.AppendFloat(b, v, 'f', -1, 64)
	if bytes.IndexByte(b[start:], '.') < 0 {
		b = append(b, ".0"...)
	}
	return b
}

// ErrQuantState is matched (with errors.Is) by every error of
// ParseQuantState.
var ErrQuantState = errors.New("bnb: invalid quant state")

// A QuantStateError describes a quant-state JSON blob that ParseQuantState
// rejects. Field is the JSON key at fault, or "" for a structural problem.
type QuantStateError struct {
	Field string
	Msg   string
}

// Error returns "bnb: quant state: <field>: <problem>".
func (e *QuantStateError) Error() string {
	if e.Field == "" {
		return "bnb: quant state: " + e.Msg
	}
	return "bnb: quant state: " + strconv.Quote(e.Field) + ": " + e.Msg
}

// Is reports whether target is ErrQuantState.
func (e *QuantStateError) Is(target error) bool { return target == ErrQuantState }

func qsErr(field, msg string) error { return &QuantStateError{Field: field, Msg: msg} }

// ParseQuantState decodes and validates a quant-state JSON blob. It accepts
// any JSON formatting and key order, but rejects unknown or repeated keys,
// missing required keys (quant_type, blocksize, dtype, shape), a partial set
// of the nested_* keys, and values bitsandbytes would not write: an unknown
// quant type, a block size outside 32…4096, a dtype other than bfloat16,
// float16 or float32, a negative dimension, a nested block size other than
// 256, a nested dtype other than float32 or a non-finite nested offset.
// Errors are *QuantStateError values.
func ParseQuantState(b []byte) (QuantState, error) {
	var s QuantState
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return s, qsErr("", "not a JSON object")
	}
	seen := map[string]bool{}
	var nested int
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return s, qsErr("", "malformed JSON: "+err.Error())
		}
		key, ok := tok.(string)
		if !ok {
			return s, qsErr("", "malformed JSON object")
		}
		if seen[key] {
			return s, qsErr(key, "repeated key")
		}
		seen[key] = true
		switch key {
		case "quant_type":
			v, err := decodeString(dec, key)
			if err != nil {
				return s, err
			}
			q, ok := ParseQuantType(v)
			if !ok {
				return s, qsErr(key, "unknown quant type "+strconv.Quote(v))
			}
			s.QuantType = q
		case "blocksize":
			v, err := decodeInt(dec, key)
			if err != nil {
				return s, err
			}
			if !ValidBlocksize(int(v)) {
				return s, qsErr(key, "invalid block size "+strconv.FormatInt(v, 10))
			}
			s.Blocksize = int(v)
		case "dtype":
			v, err := decodeString(dec, key)
			if err != nil {
				return s, err
			}
			switch v {
			case "bfloat16", "float16", "float32":
			default:
				return s, qsErr(key, "unsupported dtype "+strconv.Quote(v))
			}
			s.DType = v
		case "shape":
			sh, err := decodeShape(dec, key)
			if err != nil {
				return s, err
			}
			s.Shape = sh
		case "nested_blocksize":
			nested++
			v, err := decodeInt(dec, key)
			if err != nil {
				return s, err
			}
			if v != NestedBlocksize {
				return s, qsErr(key, "nested block size "+strconv.FormatInt(v, 10)+", want 256")
			}
			s.NestedBlocksize = int(v)
		case "nested_dtype":
			nested++
			v, err := decodeString(dec, key)
			if err != nil {
				return s, err
			}
			if v != "float32" {
				return s, qsErr(key, "nested dtype "+strconv.Quote(v)+", want \"float32\"")
			}
			s.NestedDType = v
		case "nested_offset":
			nested++
			num, err := decodeNumber(dec, key)
			if err != nil {
				return s, err
			}
			f, err := num.Float64()
			if err != nil || math.IsInf(float64(float32(f)), 0) {
				return s, qsErr(key, "offset "+num.String()+" is not a finite float32")
			}
			s.NestedOffset = float32(f)
		default:
			return s, qsErr(key, "unknown key")
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return s, qsErr("", "malformed JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return s, qsErr("", "data after the JSON object")
	}
	for _, k := range [...]string{"quant_type", "blocksize", "dtype", "shape"} {
		if !seen[k] {
			return s, qsErr(k, "missing")
		}
	}
	switch nested {
	case 0:
	case 3:
		s.DoubleQuant = true
	default:
		for _, k := range [...]string{"nested_blocksize", "nested_dtype", "nested_offset"} {
			if !seen[k] {
				return s, qsErr(k, "missing (the other nested_* keys are present)")
			}
		}
	}
	return s, nil
}

func decodeNumber(dec *json.Decoder, key string) (json.Number, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", qsErr(key, "malformed JSON: "+err.Error())
	}
	n, ok := tok.(json.Number)
	if !ok {
		return "", qsErr(key, "not a number")
	}
	return n, nil
}

func decodeInt(dec *json.Decoder, key string) (int64, error) {
	n, err := decodeNumber(dec, key)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil {
		return 0, qsErr(key, "not an integer: "+n.String())
	}
	return v, nil
}

func decodeString(dec *json.Decoder, key string) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", qsErr(key, "malformed JSON: "+err.Error())
	}
	v, ok := tok.(string)
	if !ok {
		return "", qsErr(key, "not a string")
	}
	return v, nil
}

func decodeShape(dec *json.Decoder, key string) ([]int64, error) {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, qsErr(key, "not a list")
	}
	sh := []int64{}
	for dec.More() {
		v, err := decodeInt(dec, key)
		if err != nil {
			return nil, err
		}
		if v < 0 {
			return nil, qsErr(key, "negative dimension")
		}
		if len(sh) >= 64 {
			return nil, qsErr(key, "more than 64 dimensions")
		}
		sh = append(sh, v)
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim(']') {
		return nil, qsErr(key, "malformed list")
	}
	return sh, nil
}
