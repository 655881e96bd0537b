package bnb

import (
	"bytes"
	"compress/gzip"
	_ "embed" // for the reciprocal error table
	"io"
	"math"
	"sync"
)

// rcpTableGz is, for each 23-bit mantissa m, the signed byte
// bits(rcp.approx.ftz.f32(x)) - bits(RN(1/x)) measured on an sm_90 GPU for
// every x with that mantissa (spec §2.3). Every entry is -1, 0 or +1.
//
//go:embed rcp_approx_ftz_f32_sm90_minus_ieee.int8.gz
var rcpTableGz []byte

const rcpTableLen = 1 << 23

// rcpTable holds the embedded table decoded to 2 bits per mantissa
// (two's complement, so 0b11 is -1): 2 MiB instead of 8.
var rcpTable = sync.OnceValue(func() *[rcpTableLen / 4]byte {
	t, err := decodeRcpTable(rcpTableGz)
	if err != nil {
		// The table is part of the binary; a bad one is a build error.
		panic("bnb: embedded reciprocal table: " + err.Error())
	}
	return t
})

// decodeRcpTable expands the gzip'd int8 table into the 2-bit form, four
// entries (one output byte) at a time: rcpCode maps an entry's byte to its
// two bits, and to 4 where the entry is not -1, 0 or +1.
func decodeRcpTable(gz []byte) (*[rcpTableLen / 4]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, err
	}
	t := new([rcpTableLen / 4]byte)
	var code [256]byte
	for i := range code {
		code[i] = 4
	}
	code[0x00], code[0x01], code[0xff] = 0, 1, 3
	buf := make([]byte, 1<<16)
	out := t[:]
	for len(out) > 0 {
		n, err := io.ReadFull(zr, buf[:min(len(buf), 4*len(out))])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, errRcpTable("shorter than 2^23 entries")
		}
		if err != nil {
			return nil, err
		}
		var bad byte
		for i := range out[:n/4] {
			c0, c1, c2, c3 := code[buf[4*i]], code[buf[4*i+1]], code[buf[4*i+2]], code[buf[4*i+3]]
			bad |= c0 | c1 | c2 | c3
			out[i] = c0 | c1<<2 | c2<<4 | c3<<6
		}
		if bad&4 != 0 {
			return nil, errRcpTable("entry out of range")
		}
		out = out[n/4:]
	}
	if n, err := zr.Read(buf[:1]); n > 0 {
		return nil, errRcpTable("longer than 2^23 entries")
	} else if err != nil && err != io.EOF {
		return nil, err
	}
	return t, nil
}

type errRcpTable string

func (e errRcpTable) Error() string { return string(e) }

// rcpDelta returns the table entry for mantissa m (0 <= m < 2^23).
func rcpDelta(t *[rcpTableLen / 4]byte, m uint32) int32 {
	v := uint32(t[m>>2]>>(2*(m&3))) & 3
	return int32(v<<30) >> 30
}

// rcpApprox emulates the sm_90 MUFU.RCP instruction that CUDA emits for
// 1.0f/x under --use_fast_math (PTX rcp.approx.ftz.f32): a subnormal or zero
// x counts as a zero of the same sign (result ±Inf), ±Inf gives ±0, a
// subnormal result is flushed to a zero, and otherwise the result is the
// correctly rounded reciprocal corrected by the measured per-mantissa error.
func rcpApprox(x float32) float32 {
	return rcpApproxT(rcpTable(), x)
}

func rcpApproxT(t *[rcpTableLen / 4]byte, x float32) float32 {
	u := math.Float32bits(x)
	sign := u & 0x80000000
	switch e := u & 0x7f800000; {
	case u&0x7fffffff > 0x7f800000: // NaN
		return x
	case e == 0: // zero or subnormal: flushed to zero
		return math.Float32frombits(sign | 0x7f800000)
	case e == 0x7f800000: // Inf
		return math.Float32frombits(sign)
	}
	y := math.Float32bits(1 / x)
	if y&0x7f800000 == 0 { // subnormal result: flushed to zero
		return math.Float32frombits(sign)
	}
	return math.Float32frombits(uint32(int32(y) + rcpDelta(t, u&0x7fffff)))
}

// Prepare builds the tables that the kernels share (the reciprocal table
// above, the code tables, the 8-bit double-quant table: about 20 ms of
// CPU, once per process), so that a caller can have it done ahead of time,
// in parallel with other work. Without it the first kernel call builds
// them, and every goroutine that calls a kernel meanwhile waits. It is
// safe for concurrent use.
func Prepare() {
	rcpTable()
	codeTables()
	dynamicQuantizer()
	bf16Rcp()
	f16Rcp()
}
