package pyjson

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxDepth is the deepest nesting of arrays and objects Parse accepts.
const MaxDepth = 1000

// SyntaxError is a parse failure at a byte offset of the input.
type SyntaxError struct {
	Offset int64  // byte offset of the problem in the input
	Msg    string // what is wrong, without the "pyjson:" prefix
}

// Error formats the error as "pyjson: offset N: msg".
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("pyjson: offset %d: %s", e.Offset, e.Msg)
}

// DuplicateKeyError reports an object that has the same key twice. Python
// would silently keep the last value; pyjson refuses the document.
type DuplicateKeyError struct {
	Key    string // the repeated key, unescaped
	Offset int64  // byte offset of the second occurrence
}

// Error formats the error as `pyjson: offset N: duplicate key "k"`.
func (e *DuplicateKeyError) Error() string {
	return fmt.Sprintf("pyjson: offset %d: duplicate key %s", e.Offset, strconv.Quote(e.Key))
}

// Parse parses one JSON document (surrounding whitespace allowed).
//
// It accepts what Python's json.loads accepts from UTF-8 bytes, with these
// exceptions: duplicate keys are an error (*DuplicateKeyError); the input
// must be valid UTF-8 (no BOM, no raw surrogate bytes); nesting deeper than
// MaxDepth is an error. Like Python it accepts the literals NaN, Infinity
// and -Infinity as numbers, and \u escapes of lone surrogates (kept in the
// string as their 3-byte WTF-8 form so that they are written back as the
// same escape). Other errors are *SyntaxError.
//
// The tree takes up to about 60 times len(data) bytes (for an array of
// one-digit numbers, each item a Value); callers bound len(data).
func Parse(data []byte) (*Value, error) {
	p := &parser{data: data}
	p.skipSpace()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos != len(p.data) {
		return nil, p.errorf("extra data after the JSON value")
	}
	return v, nil
}

type parser struct {
	data []byte
	pos  int
}

func (p *parser) errorf(format string, args ...any) error {
	return &SyntaxError{Offset: int64(p.pos), Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) literal(word string) bool {
	if len(p.data)-p.pos >= len(word) && string(p.data[p.pos:p.pos+len(word)]) == word {
		p.pos += len(word)
		return true
	}
	return false
}

func (p *parser) value(depth int) (*Value, error) {
	if p.pos >= len(p.data) {
		return nil, p.errorf("unexpected end of input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object(depth + 1)
	case c == '[':
		return p.array(depth + 1)
	case c == '"':
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		return String(s), nil
	case c == 't' && p.literal("true"):
		return Bool(true), nil
	case c == 'f' && p.literal("false"):
		return Bool(false), nil
	case c == 'n' && p.literal("null"):
		return Null(), nil
	case c == 'N' && p.literal("NaN"):
		return Number("NaN"), nil
	case c == 'I' && p.literal("Infinity"):
		return Number("Infinity"), nil
	case c == '-' && p.literal("-Infinity"):
		return Number("-Infinity"), nil
	case c == '-' || (c >= '0' && c <= '9'):
		n := scanNumber(string(p.data[p.pos:p.pos+numberWindow(p.data[p.pos:])]), 0)
		if n == 0 {
			return nil, p.errorf("invalid number")
		}
		v := Number(string(p.data[p.pos : p.pos+n]))
		p.pos += n
		return v, nil
	}
	return nil, p.errorf("unexpected character %s", quoteByte(p.data[p.pos]))
}

// numberWindow returns the length of the run of bytes that may belong to a
// number literal at the start of b.
func numberWindow(b []byte) int {
	n := 0
	for n < len(b) {
		switch c := b[n]; {
		case c >= '0' && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
			n++
		default:
			return n
		}
	}
	return n
}

// scanNumber returns the length of the longest JSON number literal at s[i:]
// that Python's scanner would take, or 0 if there is none.
// Grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(s string, i int) int {
	start := i
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		return 0
	}
	if i+1 < len(s) && s[i] == '.' && s[i+1] >= '0' && s[i+1] <= '9' {
		i++
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if j < len(s) && s[j] >= '0' && s[j] <= '9' {
			for j < len(s) && s[j] >= '0' && s[j] <= '9' {
				j++
			}
			i = j
		}
	}
	return i - start
}

func (p *parser) array(depth int) (*Value, error) {
	if depth > MaxDepth {
		return nil, p.errorf("nesting deeper than %d", MaxDepth)
	}
	p.pos++ // '['
	v := &Value{kind: KindArray, items: []*Value{}}
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return v, nil
	}
	for {
		p.skipSpace()
		item, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		v.items = append(v.items, item)
		p.skipSpace()
		if p.pos >= len(p.data) {
			return nil, p.errorf("unexpected end of input in array")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return v, nil
		default:
			return nil, p.errorf("expected ',' or ']' in array, found %s", quoteByte(p.data[p.pos]))
		}
	}
}

func (p *parser) object(depth int) (*Value, error) {
	if depth > MaxDepth {
		return nil, p.errorf("nesting deeper than %d", MaxDepth)
	}
	p.pos++ // '{'
	v := &Value{kind: KindObject, members: []Member{}}
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return v, nil
	}
	var seen map[string]struct{}
	for {
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, p.errorf("expected a string key in object")
		}
		keyOff := p.pos
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		if seen == nil {
			seen = make(map[string]struct{})
		}
		if _, dup := seen[key]; dup {
			return nil, &DuplicateKeyError{Key: key, Offset: int64(keyOff)}
		}
		seen[key] = struct{}{}
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return nil, p.errorf("expected ':' after object key")
		}
		p.pos++
		p.skipSpace()
		val, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		v.members = append(v.members, Member{Key: key, Value: val})
		p.skipSpace()
		if p.pos >= len(p.data) {
			return nil, p.errorf("unexpected end of input in object")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			return v, nil
		default:
			return nil, p.errorf("expected ',' or '}' in object, found %s", quoteByte(p.data[p.pos]))
		}
	}
}

// str parses a string literal starting at the opening quote.
func (p *parser) str() (string, error) {
	p.pos++ // opening quote
	// Fast path: no escapes.
	start := p.pos
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		if c == '"' {
			s := string(p.data[start:p.pos])
			if !utf8.ValidString(s) {
				return "", p.invalidUTF8(start)
			}
			p.pos++
			return s, nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
		p.pos++
	}
	buf := append([]byte(nil), p.data[start:p.pos]...)
	if !utf8.Valid(buf) {
		return "", p.invalidUTF8(start)
	}
	for {
		if p.pos >= len(p.data) {
			return "", p.errorf("unterminated string")
		}
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			return string(buf), nil
		case c < 0x20:
			return "", p.errorf("control character %s in string", quoteByte(c))
		case c == '\\':
			if p.pos+1 >= len(p.data) {
				return "", p.errorf("unterminated string")
			}
			esc := p.data[p.pos+1]
			switch esc {
			case '"', '\\', '/':
				buf = append(buf, esc)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r, ok := p.hex4(p.pos + 2)
				if !ok {
					return "", p.errorf("invalid \\u escape")
				}
				p.pos += 6
				if r >= 0xD800 && r <= 0xDBFF {
					if r2, ok := p.hex4(p.pos + 2); ok && p.data[p.pos] == '\\' && p.data[p.pos+1] == 'u' && r2 >= 0xDC00 && r2 <= 0xDFFF {
						p.pos += 6
						buf = utf8.AppendRune(buf, 0x10000+(r-0xD800)<<10+(r2-0xDC00))
						continue
					}
				}
				buf = appendWTF8(buf, r)
				continue
			default:
				return "", p.errorf("invalid escape %s", quoteByte(esc))
			}
			p.pos += 2
		default:
			r, size := utf8.DecodeRune(p.data[p.pos:])
			if r == utf8.RuneError && size <= 1 {
				return "", p.invalidUTF8(p.pos)
			}
			buf = append(buf, p.data[p.pos:p.pos+size]...)
			p.pos += size
		}
	}
}

func (p *parser) invalidUTF8(from int) error {
	for i := from; i < len(p.data); {
		r, size := utf8.DecodeRune(p.data[i:])
		if r == utf8.RuneError && size <= 1 {
			p.pos = i
			break
		}
		i += size
	}
	return p.errorf("invalid UTF-8 in string")
}

// hex4 decodes four hex digits at data[i:].
func (p *parser) hex4(i int) (rune, bool) {
	if i+4 > len(p.data) {
		return 0, false
	}
	var r rune
	for _, c := range p.data[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// appendWTF8 appends r, which may be a lone surrogate, in its generalized
// UTF-8 (WTF-8) 3-byte form.
func appendWTF8(buf []byte, r rune) []byte {
	if r >= 0xD800 && r <= 0xDFFF {
		return append(buf, 0xE0|byte(r>>12), 0x80|byte(r>>6)&0x3F, 0x80|byte(r)&0x3F)
	}
	return utf8.AppendRune(buf, r)
}

func quoteByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}
