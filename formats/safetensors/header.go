package safetensors

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/qconv/qconv/formats/dtype"
)

// MaxRank is the largest number of dimensions a tensor may have: PyTorch
// refuses to create a tensor of more than 64, so no checkpoint it saved
// has one, and a shape of a million 1s is refused before it is stored.
const MaxRank = 64

// maxDepth bounds JSON nesting, as serde_json's recursion limit does. A
// valid header nests three levels deep.
const maxDepth = 128

// header is the decoded, validated JSON header.
type header struct {
	tensors  []TensorInfo // header order
	metadata map[string]string
}

// parser walks a header held in memory. It never allocates more than a
// small multiple of len(h): every slice and string it builds is bounded by
// the bytes it was built from.
type parser struct {
	h       []byte
	pos     int
	base    int64 // absolute file offset of h[0]
	members int   // keys of the top-level object, counted by skipValue
}

func (p *parser) at(i int) int64 { return p.base + int64(i) }

func (p *parser) syntaxErr(format string, args ...any) *FormatError {
	return formatErr(CodeHeaderInvalidJSON, p.at(p.pos), "", "invalid JSON header at offset %d: "+format,
		append([]any{p.at(p.pos)}, args...)...)
}

func (p *parser) ws() {
	for p.pos < len(p.h) {
		switch p.h[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// peek returns the byte at p.pos, or 0 at the end of the header. (A real
// NUL byte in the header is never valid where peek is used.)
func (p *parser) peek() byte {
	if p.pos < len(p.h) {
		return p.h[p.pos]
	}
	return 0
}

// kind names the JSON type of the value starting with c.
func kind(c byte) string {
	switch c {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

func (p *parser) describe(c byte) string {
	if c == 0 && p.pos >= len(p.h) {
		return "end of header"
	}
	if c < 0x20 || c >= 0x7f {
		return "byte " + quoteByte(c)
	}
	return "'" + string(rune(c)) + "'"
}

func quoteByte(c byte) string {
	const hex = "0123456789abcdef"
	return string([]byte{'0', 'x', hex[c>>4], hex[c&15]})
}

// skipValue checks the syntax of the JSON value at p.pos.
func (p *parser) skipValue(depth int) error {
	p.ws()
	c := p.peek()
	switch {
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return p.syntaxErr("nested more than %d levels deep", maxDepth)
		}
		p.pos++
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		p.ws()
		if p.peek() == closer {
			p.pos++
			return nil
		}
		for {
			if c == '{' {
				if depth == 0 {
					p.members++
				}
				p.ws()
				if p.peek() != '"' {
					return p.syntaxErr("expected a string key, found %s", p.describe(p.peek()))
				}
				if _, _, _, err := p.scanString(); err != nil {
					return err
				}
				p.ws()
				if p.peek() != ':' {
					return p.syntaxErr("expected ':', found %s", p.describe(p.peek()))
				}
				p.pos++
			}
			if err := p.skipValue(depth + 1); err != nil {
				return err
			}
			p.ws()
			switch p.peek() {
			case ',':
				p.pos++
			case closer:
				p.pos++
				return nil
			default:
				return p.syntaxErr("expected ',' or '%c', found %s", closer, p.describe(p.peek()))
			}
		}
	case c == '"':
		_, _, _, err := p.scanString()
		return err
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := p.scanNumber()
		return err
	}
	return p.syntaxErr("expected a value, found %s", p.describe(c))
}

func (p *parser) literal(s string) error {
	if !strings.HasPrefix(string(p.h[p.pos:min(len(p.h), p.pos+len(s))]), s) {
		return p.syntaxErr("invalid literal")
	}
	p.pos += len(s)
	return nil
}

// scanString checks the string starting at p.pos (a '"') and moves past
// it. It returns the raw contents h[start:end] and whether they hold
// escapes. Control characters and lone UTF-16 surrogates are errors, as in
// serde_json.
func (p *parser) scanString() (start, end int, escaped bool, err error) {
	p.pos++ // opening quote
	start = p.pos
	for p.pos < len(p.h) {
		c := p.h[p.pos]
		switch {
		case c == '"':
			end = p.pos
			p.pos++
			return start, end, escaped, nil
		case c < 0x20:
			return 0, 0, false, p.syntaxErr("control character %s in string", quoteByte(c))
		case c == '\\':
			escaped = true
			if err := p.scanEscape(); err != nil {
				return 0, 0, false, err
			}
		default:
			p.pos++
		}
	}
	return 0, 0, false, p.syntaxErr("unterminated string")
}

// scanEscape checks the escape sequence at p.pos (a '\\') and moves past it.
func (p *parser) scanEscape() error {
	if p.pos+1 >= len(p.h) {
		return p.syntaxErr("unterminated string")
	}
	switch p.h[p.pos+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		p.pos += 2
		return nil
	case 'u':
		r, ok := p.hex4(p.pos + 2)
		if !ok {
			return p.syntaxErr("invalid \\u escape")
		}
		switch {
		case utf16.IsSurrogate(r) && r < 0xdc00:
			r2, ok := p.hex4(p.pos + 8)
			if !ok || p.h[p.pos+6] != '\\' || p.h[p.pos+7] != 'u' || r2 < 0xdc00 || r2 > 0xdfff {
				return p.syntaxErr("lone UTF-16 surrogate in \\u escape")
			}
			p.pos += 12
		case utf16.IsSurrogate(r):
			return p.syntaxErr("lone UTF-16 surrogate in \\u escape")
		default:
			p.pos += 6
		}
		return nil
	}
	return p.syntaxErr("invalid escape \\%c", p.h[p.pos+1])
}

// hex4 decodes four hex digits at h[i:i+4].
func (p *parser) hex4(i int) (rune, bool) {
	if i < 0 || i+4 > len(p.h) {
		return 0, false
	}
	var r rune
	for _, c := range p.h[i : i+4] {
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

// decodeString returns the string whose raw contents (already checked by
// scanString) are h[start:end].
func (p *parser) decodeString(start, end int, escaped bool) string {
	raw := p.h[start:end]
	if !escaped {
		return string(raw)
	}
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			b.WriteByte(c)
			i++
			continue
		}
		switch raw[i+1] {
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r, _ := p.hex4(start + i + 2)
			if utf16.IsSurrogate(r) {
				r2, _ := p.hex4(start + i + 8)
				r = utf16.DecodeRune(r, r2)
				i += 6
			}
			b.WriteRune(r)
			i += 6
			continue
		default: // '"', '\\', '/'
			b.WriteByte(raw[i+1])
		}
		i += 2
	}
	return b.String()
}

// fieldName returns the entry key with raw contents h[start:end], without
// allocating for the three keys an entry normally holds.
func (p *parser) fieldName(start, end int, escaped bool) string {
	if !escaped {
		switch string(p.h[start:end]) {
		case "dtype":
			return "dtype"
		case "shape":
			return "shape"
		case "data_offsets":
			return "data_offsets"
		}
	}
	return p.decodeString(start, end, escaped)
}

// readString reads the string at p.pos, which the syntax pass has checked.
func (p *parser) readString() (string, error) {
	start, end, escaped, err := p.scanString()
	if err != nil {
		return "", err
	}
	return p.decodeString(start, end, escaped), nil
}

// scanNumber checks the JSON number at p.pos and moves past it. It reports
// whether the number is an integer (no fraction or exponent).
func (p *parser) scanNumber() (isInt bool, err error) {
	i := p.pos
	if i < len(p.h) && p.h[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(p.h) && p.h[i] >= '0' && p.h[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(p.h) && p.h[i] == '0':
		i++
	case digits() == 0:
		p.pos = i
		return false, p.syntaxErr("invalid number")
	}
	isInt = true
	if i < len(p.h) && p.h[i] == '.' {
		i++
		isInt = false
		if digits() == 0 {
			p.pos = i
			return false, p.syntaxErr("invalid number")
		}
	}
	if i < len(p.h) && (p.h[i] == 'e' || p.h[i] == 'E') {
		i++
		isInt = false
		if i < len(p.h) && (p.h[i] == '+' || p.h[i] == '-') {
			i++
		}
		if digits() == 0 {
			p.pos = i
			return false, p.syntaxErr("invalid number")
		}
	}
	p.pos = i
	return isInt, nil
}

// intResult is the outcome of reading an integer-valued field.
type intResult int

const (
	intOK       intResult = iota
	intNotInt             // not a number, or has a fraction or exponent
	intNegative           // has a minus sign (including -0)
	intTooLarge           // does not fit in int64
)

// readInt reads the value at p.pos as an integer. On intNotInt the parser
// has not moved.
func (p *parser) readInt() (int64, intResult) {
	c := p.peek()
	if c != '-' && (c < '0' || c > '9') {
		return 0, intNotInt
	}
	start := p.pos
	isInt, err := p.scanNumber()
	if err != nil || !isInt {
		p.pos = start
		return 0, intNotInt
	}
	digits := p.h[start:p.pos]
	if digits[0] == '-' {
		return 0, intNegative
	}
	var v int64
	for _, d := range digits {
		if v > (math.MaxInt64-int64(d-'0'))/10 {
			return 0, intTooLarge
		}
		v = v*10 + int64(d-'0')
	}
	return v, intOK
}

// countElems estimates the number of elements of the array whose '['
// was just consumed, to size the slice that holds them: appending instead
// would allocate several times the final size on a long shape. The count
// is exact for an array of numbers and bounded by the header size for
// anything else.
func (p *parser) countElems() int {
	n := 0
	for i := p.pos; i < len(p.h); i++ {
		switch p.h[i] {
		case ',':
			n++
		case ']':
			if n == 0 && bytesTrimmedEmpty(p.h[p.pos:i]) {
				return 0
			}
			return n + 1
		}
	}
	return n + 1
}

func bytesTrimmedEmpty(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return false
		}
	}
	return true
}

// parseHeader decodes and validates header bytes h, which sit at file
// offset base, for a data section of dataLen bytes. It checks every rule
// except the global layout ones (see checkLayout).
func parseHeader(h []byte, base, dataLen int64) (*header, error) {
	p := &parser{h: h, base: base}
	if !utf8.Valid(h) {
		i := 0
		for i < len(h) {
			r, n := utf8.DecodeRune(h[i:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			i += n
		}
		return nil, formatErr(CodeHeaderNotUTF8, p.at(i), "", "header is not valid UTF-8 (bad byte at offset %d)", p.at(i))
	}
	// Pass 1: syntax only, so that a malformed header is always reported
	// as such rather than as whatever schema problem comes first.
	if len(h) == 0 {
		return nil, p.syntaxErr("empty header")
	}
	if err := p.skipValue(0); err != nil {
		return nil, err
	}
	p.ws()
	if p.pos < len(h) {
		if h[p.pos] == 0 {
			return nil, p.syntaxErr("NUL byte after the header object (pad with spaces, not NULs)")
		}
		return nil, p.syntaxErr("unexpected %s after the header object", p.describe(h[p.pos]))
	}
	if h[0] != '{' {
		p.pos = 0
		p.ws()
		if p.peek() == '{' {
			return nil, formatErr(CodeHeaderNotObject, base, "", "header starts with whitespace, not '{'")
		}
		return nil, formatErr(CodeHeaderNotObject, base, "", "header is a JSON %s, not an object", kind(p.peek()))
	}

	// Pass 2: the schema.
	// Pass 1 counted the keys: the tensors (and __metadata__), so that the
	// slices below are allocated once (no doubling while appending).
	hd := &header{tensors: make([]TensorInfo, 0, p.members)}
	// keyAt holds each tensor's key offset, for a duplicate name, which is
	// found by sorting (checkDuplicates) rather than with a map: a map of
	// names costs about 40 bytes a tensor, a lot for a header of millions.
	keyAts := make([]int32, 0, p.members)
	p.pos = 1
	sawMeta := false
	p.ws()
	if p.peek() == '}' {
		return hd, nil
	}
	for {
		p.ws()
		keyAt := p.pos
		name, err := p.readString()
		if err != nil {
			return nil, err
		}
		p.ws()
		p.pos++ // ':'
		p.ws()
		if name == "__metadata__" {
			if sawMeta {
				return nil, formatErr(CodeDuplicateKey, p.at(keyAt), "", "duplicate key \"__metadata__\"")
			}
			sawMeta = true
			if hd.metadata, err = p.readMetadata(); err != nil {
				return nil, err
			}
		} else {
			t, err := p.readEntry(name, keyAt, dataLen)
			if err != nil {
				// A duplicate name before this entry comes first.
				if derr := p.checkDuplicates(hd.tensors, keyAts); derr != nil {
					return nil, derr
				}
				return nil, err
			}
			hd.tensors = append(hd.tensors, t)
			keyAts = append(keyAts, int32(keyAt))
		}
		p.ws()
		if p.peek() == '}' {
			if err := p.checkDuplicates(hd.tensors, keyAts); err != nil {
				return nil, err
			}
			return hd, nil
		}
		p.pos++ // ','
	}
}

func (p *parser) readMetadata() (map[string]string, error) {
	if c := p.peek(); c != '{' {
		return nil, formatErr(CodeMetadataType, p.at(p.pos), "", "__metadata__ is a JSON %s, not an object", kind(c))
	}
	p.pos++
	m := make(map[string]string)
	p.ws()
	if p.peek() == '}' {
		p.pos++
		return m, nil
	}
	for {
		p.ws()
		keyAt := p.pos
		k, err := p.readString()
		if err != nil {
			return nil, err
		}
		p.ws()
		p.pos++ // ':'
		p.ws()
		if c := p.peek(); c != '"' {
			return nil, formatErr(CodeMetadataType, p.at(p.pos), "", "__metadata__ value for %q is a JSON %s, not a string", k, kind(c))
		}
		v, err := p.readString()
		if err != nil {
			return nil, err
		}
		if _, dup := m[k]; dup {
			return nil, formatErr(CodeDuplicateKey, p.at(keyAt), "", "duplicate __metadata__ key %q", k)
		}
		m[k] = v
		p.ws()
		if p.peek() == '}' {
			p.pos++
			return m, nil
		}
		p.pos++ // ','
	}
}

// readEntry reads and checks one tensor entry; keyAt is the position of
// its name in the header.
func (p *parser) readEntry(name string, keyAt int, dataLen int64) (TensorInfo, error) {
	t := TensorInfo{Name: name}
	off := p.at(keyAt)
	entryErr := func(format string, args ...any) (TensorInfo, error) {
		return TensorInfo{}, formatErr(CodeTensorEntry, off, name, format, args...)
	}
	if c := p.peek(); c != '{' {
		return entryErr("entry is a JSON %s, not an object", kind(c))
	}
	p.pos++
	var dtypeName string
	var haveDType, haveShape, haveOffsets bool
	var offsets [2]int64
	var offsetRes [2]intResult
	for {
		p.ws()
		if p.peek() == '}' {
			p.pos++
			break
		}
		if p.peek() == ',' {
			p.pos++
			p.ws()
		}
		fieldAt := p.pos
		start, end, escaped, err := p.scanString()
		if err != nil {
			return TensorInfo{}, err
		}
		field := p.fieldName(start, end, escaped)
		p.ws()
		p.pos++ // ':'
		p.ws()
		dup := func() (TensorInfo, error) {
			return TensorInfo{}, formatErr(CodeDuplicateKey, p.at(fieldAt), name, "duplicate key %q in entry", field)
		}
		switch field {
		case "dtype":
			if haveDType {
				return dup()
			}
			haveDType = true
			if c := p.peek(); c != '"' {
				return entryErr("dtype is a JSON %s, not a string", kind(c))
			}
			if dtypeName, err = p.readString(); err != nil {
				return TensorInfo{}, err
			}
		case "shape":
			if haveShape {
				return dup()
			}
			haveShape = true
			if c := p.peek(); c != '[' {
				return entryErr("shape is a JSON %s, not an array", kind(c))
			}
			p.pos++
			n := p.countElems()
			if n > MaxRank {
				return TensorInfo{}, formatErr(CodeRankTooLarge, off, name, "shape has %d dimensions, more than %d (PyTorch's limit)", n, MaxRank)
			}
			t.Shape = make([]int64, 0, n)
			for {
				p.ws()
				switch p.peek() {
				case ']':
					p.pos++
				case ',':
					p.pos++
					continue
				default:
					v, res := p.readInt()
					switch res {
					case intNotInt:
						return entryErr("shape holds a JSON %s, not a non-negative integer", kind(p.peek()))
					case intNegative:
						return entryErr("shape holds a negative dimension")
					case intTooLarge:
						return TensorInfo{}, formatErr(CodeSizeOverflow, off, name, "shape dimension does not fit in int64")
					}
					t.Shape = append(t.Shape, v)
					continue
				}
				break
			}
		case "data_offsets":
			if haveOffsets {
				return dup()
			}
			haveOffsets = true
			if c := p.peek(); c != '[' {
				return entryErr("data_offsets is a JSON %s, not an array", kind(c))
			}
			p.pos++
			n := 0
			for {
				p.ws()
				switch p.peek() {
				case ']':
					p.pos++
				case ',':
					p.pos++
					continue
				default:
					v, res := p.readInt()
					if res == intNotInt {
						return entryErr("data_offsets holds a JSON %s, not an integer", kind(p.peek()))
					}
					if n < 2 {
						offsets[n], offsetRes[n] = v, res
					}
					n++
					continue
				}
				break
			}
			if n != 2 {
				return entryErr("data_offsets has %d values, want 2", n)
			}
		default:
			return entryErr("unknown key %q in entry (want dtype, shape, data_offsets)", field)
		}
	}
	switch {
	case !haveDType:
		return entryErr("entry has no dtype")
	case !haveShape:
		return entryErr("entry has no shape")
	case !haveOffsets:
		return entryErr("entry has no data_offsets")
	}

	var ok bool
	if t.DType, ok = dtype.Parse(dtypeName); !ok {
		return TensorInfo{}, formatErr(CodeUnknownDType, off, name, "unknown dtype %q", dtypeName)
	}
	nelem := int64(1)
	for _, d := range t.Shape {
		if d != 0 && nelem > math.MaxInt64/d {
			return TensorInfo{}, formatErr(CodeSizeOverflow, off, name, "number of elements of shape %v overflows int64", t.Shape)
		}
		nelem *= d
	}
	bits := int64(t.DType.Bits())
	if nelem > math.MaxInt64/bits {
		return TensorInfo{}, formatErr(CodeSizeOverflow, off, name, "size in bits of %d %s elements overflows int64", nelem, t.DType)
	}
	if nelem*bits%8 != 0 {
		return TensorInfo{}, formatErr(CodeSubByteSize, off, name, "%d %s elements are %d bits, not a whole number of bytes", nelem, t.DType, nelem*bits)
	}
	want := nelem * bits / 8
	if offsetRes[0] == intNegative || offsetRes[1] == intNegative {
		return TensorInfo{}, formatErr(CodeOffsetsInvalid, off, name, "negative data offset")
	}
	if offsetRes[0] == intTooLarge || offsetRes[1] == intTooLarge {
		return TensorInfo{}, formatErr(CodeDataOutOfBounds, off, name, "data offset does not fit in int64")
	}
	t.Begin, t.End = offsets[0], offsets[1]
	if t.Begin > t.End {
		return TensorInfo{}, formatErr(CodeOffsetsInvalid, off, name, "data_offsets [%d,%d] begin after they end", t.Begin, t.End)
	}
	if t.End-t.Begin != want {
		return TensorInfo{}, formatErr(CodeSizeMismatch, off, name,
			"data_offsets [%d,%d] span %d bytes, but %d %s elements need %d", t.Begin, t.End, t.End-t.Begin, nelem, t.DType, want)
	}
	if t.End > dataLen {
		return TensorInfo{}, formatErr(CodeDataOutOfBounds, off, name,
			"data_offsets [%d,%d] run past the end of the %d-byte data section", t.Begin, t.End, dataLen)
	}
	return t, nil
}

// checkDuplicates reports the first repeated tensor name of ts (in header
// order), whose keys are at keyAts.
func (p *parser) checkDuplicates(ts []TensorInfo, keyAts []int32) error {
	order := sortedByName(ts)
	first := -1 // header index of the earliest second occurrence
	for k := 1; k < len(order); k++ {
		a, b := order[k-1], order[k]
		if ts[a].Name == ts[b].Name {
			if second := int(max(a, b)); first < 0 || second < first {
				first = second
			}
		}
	}
	if first < 0 {
		return nil
	}
	return formatErr(CodeDuplicateKey, p.at(int(keyAts[first])), ts[first].Name, "duplicate tensor name")
}

// sortedByName returns the indexes of ts sorted by name (ties by index).
func sortedByName(ts []TensorInfo) []int32 {
	order := make([]int32, len(ts))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return cmp.Or(strings.Compare(ts[a].Name, ts[b].Name), cmp.Compare(a, b)) })
	return order
}
