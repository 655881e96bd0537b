package pyjson

import (
	"slices"
	"strings"
	"unicode/utf8"
)

// MarshalIndentSorted returns v as Python's
// json.dumps(v, indent=2, sort_keys=True) writes it: two-space indentation,
// "," at line ends, ": " after keys, "{}" and "[]" for empty containers,
// object keys sorted by code point at every level, non-ASCII escaped as
// \uXXXX (surrogate pairs above U+FFFF), numbers as their literal text.
// There is no trailing newline; transformers adds one when it writes a
// file ("model.safetensors.index.json", "config.json").
func (v *Value) MarshalIndentSorted() []byte {
	var b []byte
	return appendIndent(b, v, 0)
}

// MarshalCompact returns v as Python's json.dumps(v) writes it with default
// arguments: one line, separators ", " and ": ", keys in insertion order,
// ASCII only. This is the form of bitsandbytes' quant-state blobs.
func (v *Value) MarshalCompact() []byte {
	var b []byte
	return appendCompact(b, v)
}

func appendScalar(b []byte, v *Value) []byte {
	switch v.Kind() {
	case KindBool:
		if v.b {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	case KindNumber:
		return append(b, v.s...)
	case KindString:
		return AppendString(b, v.s)
	}
	return append(b, "null"...)
}

func appendCompact(b []byte, v *Value) []byte {
	switch v.Kind() {
	case KindArray:
		b = append(b, '[')
		for i, it := range v.items {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendCompact(b, it)
		}
		return append(b, ']')
	case KindObject:
		b = append(b, '{')
		for i, m := range v.members {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = AppendString(b, m.Key)
			b = append(b, ": "...)
			b = appendCompact(b, m.Value)
		}
		return append(b, '}')
	}
	return appendScalar(b, v)
}

func appendNewline(b []byte, level int) []byte {
	b = append(b, '\n')
	for range level {
		b = append(b, "  "...)
	}
	return b
}

func appendIndent(b []byte, v *Value, level int) []byte {
	switch v.Kind() {
	case KindArray:
		if len(v.items) == 0 {
			return append(b, "[]"...)
		}
		b = append(b, '[')
		for i, it := range v.items {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendNewline(b, level+1)
			b = appendIndent(b, it, level+1)
		}
		b = appendNewline(b, level)
		return append(b, ']')
	case KindObject:
		if len(v.members) == 0 {
			return append(b, "{}"...)
		}
		sorted := slices.Clone(v.members)
		slices.SortStableFunc(sorted, func(x, y Member) int { return compareKeys(x.Key, y.Key) })
		b = append(b, '{')
		for i, m := range sorted {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendNewline(b, level+1)
			b = AppendString(b, m.Key)
			b = append(b, ": "...)
			b = appendIndent(b, m.Value, level+1)
		}
		b = appendNewline(b, level)
		return append(b, '}')
	}
	return appendScalar(b, v)
}

// compareKeys orders keys as Python orders str values: by code point.
// For valid UTF-8 (and WTF-8 lone surrogates) that is byte order.
func compareKeys(x, y string) int { return strings.Compare(x, y) }

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string literal the way Python's json
// module writes it with ensure_ascii=True: \" \\ \n \r \t \b \f, every
// other character outside ' '..'~' as \uXXXX with lower-case hex, characters
// above U+FFFF as a surrogate pair. Lone surrogates stored in WTF-8 form are
// written as their escape; other invalid UTF-8 bytes are written as \ufffd.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '"' && c != '\\' {
			b = append(b, c)
			i++
			continue
		}
		if esc := shortEscape(c); esc != 0 {
			b = append(b, '\\', esc)
			i++
			continue
		}
		r, size := decodeWTF8(s[i:])
		i += size
		if r >= 0x10000 {
			r -= 0x10000
			b = appendU(b, 0xD800+(r>>10))
			b = appendU(b, 0xDC00+(r&0x3FF))
		} else {
			b = appendU(b, r)
		}
	}
	return append(b, '"')
}

// shortEscape returns the letter of the two-character escape Python
// writes for c (\" \\ \n \r \t \b \f), or 0 if there is none.
func shortEscape(c byte) byte {
	switch c {
	case '"', '\\':
		return c
	case '\n':
		return 'n'
	case '\r':
		return 'r'
	case '\t':
		return 't'
	case '\b':
		return 'b'
	case '\f':
		return 'f'
	}
	return 0
}

func appendU(b []byte, r rune) []byte {
	return append(b, '\\', 'u', hexDigits[r>>12&0xF], hexDigits[r>>8&0xF], hexDigits[r>>4&0xF], hexDigits[r&0xF])
}

// decodeWTF8 decodes one code point at the start of s, accepting the 3-byte
// encodings of surrogates. Invalid bytes decode as U+FFFD, one byte each.
func decodeWTF8(s string) (rune, int) {
	r, size := utf8.DecodeRuneInString(s)
	if r != utf8.RuneError || size != 1 {
		return r, size
	}
	if len(s) >= 3 && s[0] == 0xED && s[1] >= 0xA0 && s[1] <= 0xBF && s[2] >= 0x80 && s[2] <= 0xBF {
		return rune(s[0]&0x0F)<<12 | rune(s[1]&0x3F)<<6 | rune(s[2]&0x3F), 3
	}
	return utf8.RuneError, 1
}
