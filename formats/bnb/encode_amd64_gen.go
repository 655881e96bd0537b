//go:build ignore

// This program writes encode_amd64.s, the AVX2 and AVX-512 kernels of the
// raw fast paths. Run it with go generate (see encode_amd64.go). It takes the
// thresholds from nothing but the constants below, which must be
// nf4ThresholdBits and fp4ThresholdBits (TestEncodeSIMDThresholds would
// fail otherwise).
package main

import (
	"bytes"
	"fmt"
	"log"
	"os"
)

var (
	nf4 = []uint32{0xbf591cd9, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871,
		0x3d22faff, 0x3df64863, 0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d03, 0x3f248daf, 0x3f5c89d9}
	fp4 = []uint32{0x3b2aaab9, 0x3db00000, 0x3e555555, 0x3e955555, 0x3ed55556, 0x3f155550, 0x3f555555}
)

var buf bytes.Buffer

// statsPrefetch is how far ahead of its loads, in bytes, stats16AVX2
// prefetches. The statistics kernel is the first to read a block; where
// the input is read through a mapping of the page cache (not copied into
// an L2-sized buffer first), its loads would otherwise wait for memory at
// the start of every 4 KiB page, where the hardware prefetchers stop.
// Measured on the 2-core VM (convert of 2 GB bf16): 1024 bytes ahead gave
// a few per cent less CPU, 2048 to 8192 about 15 %.
const statsPrefetch = 4096

func w(format string, args ...any) { fmt.Fprintf(&buf, format+"\n", args...) }

func data(name string, words []uint32) {
	for i, v := range words {
		w("DATA %s<>+%d(SB)/4, $0x%08x", name, 4*i, v)
	}
	w("GLOBL %s<>(SB), RODATA|NOPTR, $%d", name, 4*len(words))
	w("")
}

// clamped returns the 16 entries t[min(i+d, len(t)-1)].
func clamped(t []uint32, d int) []uint32 {
	s := make([]uint32, 16)
	for i := range s {
		s[i] = t[min(i+d, len(t)-1)]
	}
	return s
}

func repeat(v uint32, n int) []uint32 {
	s := make([]uint32, n)
	for i := range s {
		s[i] = v
	}
	return s
}

// encoder writes one kernel. Per group of 32 elements: widen four vectors
// of 8 to float32 (BF16: shift; F16: sign-extending shift and mask, a value
// 2^112 too small that r·2^112 rescales; F32: as is), multiply by r, find
// the number of thresholds each product exceeds (NF4: by the decision
// tree; FP4: by counting, on the magnitude, with the sign kept in bit 31 of
// the count), pack the 32 codes to bytes in order, pair them into nibbles
// and store 16 bytes.
func encoder(name, format string, isFP4 bool) {
	w("// func %s(out, src *byte, rs *float32, nblocks, bs int)", name)
	w("TEXT ·%s(SB), NOSPLIT, $0-40", name)
	w("\tMOVQ out+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ rs+16(FP), DX")
	w("\tMOVQ nblocks+24(FP), CX")
	w("\tMOVQ bs+32(FP), R8")
	w("\tSHRQ $5, R8")
	w("\tTESTQ CX, CX")
	w("\tJZ done")
	w("\tTESTQ R8, R8")
	w("\tJZ done")
	w("\tVMOVDQU packperm<>(SB), Y13")
	w("block:")
	w("\tVBROADCASTSS (DX), Y15")
	w("\tMOVQ R8, R11")
	w("group:")
	for g := range 4 {
		switch format {
		case "F16":
			w("\tVPMOVSXWD %d(SI), Y%d", 16*g, g)
		case "BF16":
			w("\tVPMOVZXWD %d(SI), Y%d", 16*g, g)
		default:
			w("\tVMOVDQU %d(SI), Y%d", 32*g, g)
		}
	}
	for g := range 4 {
		switch format {
		case "F16":
			w("\tVPSLLD $13, Y%d, Y%d", g, g)
			w("\tVPAND f16mask<>(SB), Y%d, Y%d", g, g)
		case "BF16":
			w("\tVPSLLD $16, Y%d, Y%d", g, g)
		}
	}
	for g := range 4 {
		w("\tVMULPS Y15, Y%d, Y%d", g, g)
	}
	var thr []uint32
	thrName := ""
	if isFP4 {
		thr, thrName = fp4, "fp4thr"
		for g := range 4 {
			// count = 0x80000000 where s <= -0x1p-126 (the GPU's s < 0
			// after flushing), then s = |s|.
			w("\tVCMPPS $0x12, negmin<>(SB), Y%d, Y%d", g, 4+g)
			w("\tVPSLLD $31, Y%d, Y%d", 4+g, 4+g)
			w("\tVANDPS absmask<>(SB), Y%d, Y%d", g, g)
		}
	} else {
		// NF4: the kernel's decision tree, four levels of one compare each
		// (a strict >, false for NaN): the threshold of each lane's node
		// comes from a VPERMPS of the level's table by the path so far,
		// and the path is the code.
		for g := range 4 {
			w("\tVCMPPS $0x1e, nf4t7<>(SB), Y%d, Y%d", g, 8+g)
			w("\tVPSRLD $31, Y%d, Y%d", 8+g, 4+g)
		}
		for _, level := range []string{"nf4l2", "nf4l3", "nf4l4"} {
			for g := range 4 {
				w("\tVPERMPS %s<>(SB), Y%d, Y%d", level, 4+g, 8+g)
			}
			for g := range 4 {
				w("\tVCMPPS $0x1e, Y%d, Y%d, Y%d", 8+g, g, 8+g)
			}
			for g := range 4 {
				w("\tVPSRLD $31, Y%d, Y%d", 8+g, 8+g)
				w("\tVPADDD Y%d, Y%d, Y%d", 4+g, 4+g, 4+g)
				w("\tVPADDD Y%d, Y%d, Y%d", 8+g, 4+g, 4+g)
			}
		}
		thr = nil
	}
	for k := range thr {
		// GT_OQ: false for NaN; a subnormal compares like the zero the
		// GPU makes of it, no threshold lying between them.
		w("\tVBROADCASTSS %s<>+%d(SB), Y12", thrName, 4*k)
		for g := range 4 {
			w("\tVCMPPS $0x1e, Y12, Y%d, Y%d", g, 8+g)
		}
		for g := range 4 {
			w("\tVPSUBD Y%d, Y%d, Y%d", 8+g, 4+g, 4+g)
		}
	}
	if isFP4 {
		for g := range 4 {
			w("\tVPERMD fp4rank<>(SB), Y%d, Y%d", 4+g, 8+g)
			w("\tVPSRLD $28, Y%d, Y%d", 4+g, 4+g)
			w("\tVPOR Y%d, Y%d, Y%d", 8+g, 4+g, 4+g)
		}
	}
	w("\tVPACKUSDW Y5, Y4, Y8")
	w("\tVPACKUSDW Y7, Y6, Y9")
	w("\tVPACKUSWB Y9, Y8, Y10")
	w("\tVPERMD Y10, Y13, Y10")
	w("\tVPMADDUBSW nibbles<>(SB), Y10, Y10")
	w("\tVPACKUSWB Y10, Y10, Y10")
	w("\tVPERMQ $0x08, Y10, Y10")
	w("\tVMOVDQU X10, (DI)")
	groupEnd(format)
}

// encoder512 writes one AVX-512 kernel with the arguments and the bytes of
// the AVX2 kernel of the same format and type. Per group of 32 elements:
// make two vectors of 16 float32s and multiply by r as the AVX2 kernel
// does (16-bit formats: one load of 32 elements, the even ones in one
// vector and the odd ones in the other, each at its dword's place), then
// find each product's code, the number of thresholds it exceeds
// (a strict >, false for NaN), by a binary search over the sorted
// thresholds: one compare into a mask register per level, the threshold
// of each lane's node a VPERMPS of a 16-entry table by the code so far,
// and the level's bit merged into the code under the mask. FP4 searches
// the magnitude and sets the sign bit 8 under the mask of s <= -2^-126
// after mapping the rank to its code. 16-bit formats: the even codes go
// to the high nibbles of the odd ones and VPMOVDB stores the 16 bytes (a
// pair's first element in the high nibble); F32: the 16 codes of a vector
// are paired into bytes within each quadword and stored with VPMOVQB.
// (Measured on the 2-core VM, BenchmarkEncode16/avx512: 5.5 -> 7.8 GB/s
// of input from the even/odd split, against two widening loads and two
// VPMOVQB per group.)
func encoder512(name, format string, isFP4 bool) {
	w("// func %s(out, src *byte, rs *float32, nblocks, bs int)", name)
	w("TEXT ·%s(SB), NOSPLIT, $0-40", name)
	w("\tMOVQ out+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ rs+16(FP), DX")
	w("\tMOVQ nblocks+24(FP), CX")
	w("\tMOVQ bs+32(FP), R8")
	w("\tSHRQ $5, R8")
	w("\tTESTQ CX, CX")
	w("\tJZ done")
	w("\tTESTQ R8, R8")
	w("\tJZ done")
	// Z16-Z19: the root threshold (broadcast) and the tables of the
	// levels below it; Z20-Z23: the code bits 8, 4, 2, 1.
	if isFP4 {
		w("\tVBROADCASTSS fp4thr<>+12(SB), Z16")
		w("\tVMOVDQU32 fp4z2<>(SB), Z17")
		w("\tVMOVDQU32 fp4z3<>(SB), Z18")
		w("\tVMOVDQU32 fp4rankz<>(SB), Z19")
		w("\tVPBROADCASTD absmask<>(SB), Z25")
		w("\tVPBROADCASTD negmin<>(SB), Z26")
	} else {
		w("\tVPBROADCASTD nf4t7<>(SB), Z16")
		w("\tVMOVDQU32 nf4z2<>(SB), Z17")
		w("\tVMOVDQU32 nf4z3<>(SB), Z18")
		w("\tVMOVDQU32 nf4z4<>(SB), Z19")
	}
	switch format {
	case "F16":
		w("\tVPBROADCASTD f16mask<>(SB), Z24")
	case "BF16":
		w("\tVPBROADCASTD hi16<>(SB), Z27")
	}
	w("\tVPBROADCASTD bit8<>(SB), Z20")
	w("\tVPSRLD $1, Z20, Z21")
	w("\tVPSRLD $2, Z20, Z22")
	w("\tVPSRLD $3, Z20, Z23")
	w("block:")
	w("\tVBROADCASTSS (DX), Z15")
	w("\tMOVQ R8, R11")
	w("group:")
	// 16-bit elements: one load of 32, as 16 pairs; Z0 gets the even
	// elements (the low halves, shifted up) and Z1 the odd ones, so that
	// dword j of the codes holds elements 2j and 2j+1 and one VPMOVDB packs
	// them. F32: Z0 and Z1 hold elements 0-15 and 16-31.
	switch format {
	case "F16":
		// As float32 bits: the sign at bit 31, the 15 magnitude bits at
		// 13-27 (SRAD keeps the sign; the mask clears the copies of it and
		// the bits of the other element).
		w("\tVMOVDQU32 0(SI), Z1")
		w("\tVPSLLD $16, Z1, Z0")
		w("\tVPSRAD $3, Z0, Z0")
		w("\tVPSRAD $3, Z1, Z1")
		w("\tVPANDD Z24, Z0, Z0")
		w("\tVPANDD Z24, Z1, Z1")
	case "BF16":
		w("\tVMOVDQU32 0(SI), Z1")
		w("\tVPSLLD $16, Z1, Z0")
		w("\tVPANDD Z27, Z1, Z1")
	default:
		for g := range 2 {
			w("\tVMOVDQU32 %d(SI), Z%d", 64*g, g)
		}
	}
	for g := range 2 {
		w("\tVMULPS Z15, Z%d, Z%d", g, g)
	}
	// x in Z0/Z1, the code in Z2/Z3, the node's threshold in Z4/Z5, the
	// level's mask in K1/K2 and FP4's sign mask in K3/K4.
	bits := []int{20, 21, 22, 23} // 8, 4, 2, 1
	tables := []int{17, 18, 19}
	if isFP4 {
		bits = bits[1:] // 4, 2, 1
		tables = tables[:2]
		for g := range 2 {
			w("\tVCMPPS $0x12, Z26, Z%d, K%d", g, 3+g)
			w("\tVPANDD Z25, Z%d, Z%d", g, g)
		}
	}
	for g := range 2 {
		w("\tVCMPPS $0x1e, Z16, Z%d, K%d", g, 1+g)
		w("\tVMOVDQA32.Z Z%d, K%d, Z%d", bits[0], 1+g, 2+g)
	}
	for l, tab := range tables {
		for g := range 2 {
			w("\tVPERMPS Z%d, Z%d, Z%d", tab, 2+g, 4+g)
		}
		for g := range 2 {
			w("\tVCMPPS $0x1e, Z%d, Z%d, K%d", 4+g, g, 1+g)
		}
		for g := range 2 {
			w("\tVPORD Z%d, Z%d, K%d, Z%d", bits[l+1], 2+g, 1+g, 2+g)
		}
	}
	if isFP4 {
		for g := range 2 {
			w("\tVPERMD Z19, Z%d, Z%d", 2+g, 2+g)
			w("\tVPORD Z20, Z%d, K%d, Z%d", 2+g, 3+g, 2+g)
		}
	}
	if format == "F32" {
		for g := range 2 {
			w("\tVPSRLQ $32, Z%d, Z%d", 2+g, 4+g)
			w("\tVPSLLD $4, Z%d, Z%d", 2+g, 2+g)
			w("\tVPORD Z%d, Z%d, Z%d", 4+g, 2+g, 2+g)
			w("\tVPMOVQB Z%d, %d(DI)", 2+g, 8*g)
		}
	} else {
		// The first element of a pair in the high nibble.
		w("\tVPSLLD $4, Z2, Z2")
		w("\tVPORD Z3, Z2, Z2")
		w("\tVPMOVDB Z2, 0(DI)")
	}
	groupEnd(format)
}

// groupEnd ends an encoder's group and block loops: advance past the 32
// elements of the group (in format) and their 16 bytes of codes, and
// past the block's reciprocal.
func groupEnd(format string) {
	if format == "F32" {
		w("\tADDQ $128, SI")
	} else {
		w("\tADDQ $64, SI")
	}
	w("\tADDQ $16, DI")
	w("\tDECQ R11")
	w("\tJNZ group")
	w("\tADDQ $4, DX")
	w("\tDECQ CX")
	w("\tJNZ block")
	w("done:")
	w("\tVZEROUPPER")
	w("\tRET")
	w("")
}

// stats writes stats16AVX2: per block, the largest magnitude m = bits &
// 0x7fff of its 16-bit elements, plus 1<<16 if one of them has 0 < m <
// 0x80 (a BF16 subnormal). It keeps the lane-wise maximum of m and minimum
// of m-1 (wrapping, so that zeros do not count), then folds each with
// PHMINPOSUW (the maximum as the minimum of 0xffff-m).
func stats() {
	w("// func stats16AVX2(out *uint32, src *byte, nblocks, bs int)")
	w("TEXT ·stats16AVX2(SB), NOSPLIT, $0-32")
	w("\tMOVQ out+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ nblocks+16(FP), CX")
	w("\tMOVQ bs+24(FP), R8")
	w("\tSHRQ $5, R8")
	w("\tTESTQ CX, CX")
	w("\tJZ done")
	w("\tTESTQ R8, R8")
	w("\tJZ done")
	w("\tVMOVDQU magmask<>(SB), Y14")
	w("\tVPCMPEQW Y13, Y13, Y13")
	w("block:")
	w("\tVPXOR Y0, Y0, Y0")
	w("\tVPXOR Y4, Y4, Y4")
	w("\tVPCMPEQW Y1, Y1, Y1")
	w("\tVPCMPEQW Y5, Y5, Y5")
	w("\tMOVQ R8, R11")
	w("loop:")
	w("\tPREFETCHT0 %d(SI)", statsPrefetch)
	w("\tVPAND (SI), Y14, Y2")
	w("\tVPAND 32(SI), Y14, Y6")
	w("\tVPMAXUW Y2, Y0, Y0")
	w("\tVPMAXUW Y6, Y4, Y4")
	w("\tVPADDW Y13, Y2, Y2")
	w("\tVPADDW Y13, Y6, Y6")
	w("\tVPMINUW Y2, Y1, Y1")
	w("\tVPMINUW Y6, Y5, Y5")
	w("\tADDQ $64, SI")
	w("\tDECQ R11")
	w("\tJNZ loop")
	w("\tVPMAXUW Y4, Y0, Y0")
	w("\tVPMINUW Y5, Y1, Y1")
	w("\tVEXTRACTI128 $1, Y0, X2")
	w("\tVPMAXUW X2, X0, X0")
	w("\tVEXTRACTI128 $1, Y1, X3")
	w("\tVPMINUW X3, X1, X1")
	w("\tVPXOR X13, X0, X0")
	w("\tVPHMINPOSUW X0, X0")
	w("\tVPHMINPOSUW X1, X1")
	w("\tVMOVD X0, AX")
	w("\tANDL $0xffff, AX")
	w("\tXORL $0xffff, AX")
	w("\tVMOVD X1, BX")
	w("\tANDL $0xffff, BX")
	w("\tMOVL AX, DX")
	w("\tORL $0x10000, DX")
	w("\tCMPL BX, $0x7f")
	w("\tCMOVLCS DX, AX")
	w("\tMOVL AX, (DI)")
	w("\tADDQ $4, DI")
	w("\tDECQ CX")
	w("\tJNZ block")
	w("done:")
	w("\tVZEROUPPER")
	w("\tRET")
	w("")
}

// stats32 writes stats32AVX2: per block of float32 elements, the largest
// magnitude bits&0x7fffffff, plus 1<<31 if one of them is subnormal
// (0 < m < 0x00800000): lane-wise maximum of m and minimum of m-1
// (wrapping), folded by shuffles.
func stats32() {
	w("// func stats32AVX2(out *uint32, src *byte, nblocks, bs int)")
	w("TEXT ·stats32AVX2(SB), NOSPLIT, $0-32")
	w("\tMOVQ out+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ nblocks+16(FP), CX")
	w("\tMOVQ bs+24(FP), R8")
	w("\tSHRQ $4, R8")
	w("\tTESTQ CX, CX")
	w("\tJZ done")
	w("\tTESTQ R8, R8")
	w("\tJZ done")
	w("\tVMOVDQU absmask<>(SB), Y14")
	w("\tVPCMPEQD Y13, Y13, Y13")
	w("block:")
	w("\tVPXOR Y0, Y0, Y0")
	w("\tVPXOR Y4, Y4, Y4")
	w("\tVPCMPEQD Y1, Y1, Y1")
	w("\tVPCMPEQD Y5, Y5, Y5")
	w("\tMOVQ R8, R11")
	w("loop:")
	w("\tVPAND (SI), Y14, Y2")
	w("\tVPAND 32(SI), Y14, Y6")
	w("\tVPMAXUD Y2, Y0, Y0")
	w("\tVPMAXUD Y6, Y4, Y4")
	w("\tVPADDD Y13, Y2, Y2")
	w("\tVPADDD Y13, Y6, Y6")
	w("\tVPMINUD Y2, Y1, Y1")
	w("\tVPMINUD Y6, Y5, Y5")
	w("\tADDQ $64, SI")
	w("\tDECQ R11")
	w("\tJNZ loop")
	w("\tVPMAXUD Y4, Y0, Y0")
	w("\tVPMINUD Y5, Y1, Y1")
	w("\tVEXTRACTI128 $1, Y0, X2")
	w("\tVPMAXUD X2, X0, X0")
	w("\tVEXTRACTI128 $1, Y1, X3")
	w("\tVPMINUD X3, X1, X1")
	w("\tVPSHUFD $0x4e, X0, X2")
	w("\tVPMAXUD X2, X0, X0")
	w("\tVPSHUFD $0x4e, X1, X3")
	w("\tVPMINUD X3, X1, X1")
	w("\tVPSHUFD $0xb1, X0, X2")
	w("\tVPMAXUD X2, X0, X0")
	w("\tVPSHUFD $0xb1, X1, X3")
	w("\tVPMINUD X3, X1, X1")
	w("\tVMOVD X0, AX")
	w("\tVMOVD X1, BX")
	w("\tMOVL AX, DX")
	w("\tORL $0x80000000, DX")
	w("\tCMPL BX, $0x007fffff")
	w("\tCMOVLCS DX, AX")
	w("\tMOVL AX, (DI)")
	w("\tADDQ $4, DI")
	w("\tDECQ CX")
	w("\tJNZ block")
	w("done:")
	w("\tVZEROUPPER")
	w("\tRET")
	w("")
}

// round writes roundBF16AVX2: n float32 elements (n a multiple of 16) to
// BF16 as bf16RNE does, (u + 0x7fff + (u>>16)&1) >> 16 with every NaN
// replaced by 0x7FC0.
func round() {
	w("// func roundBF16AVX2(dst, src *byte, n int)")
	w("TEXT ·roundBF16AVX2(SB), NOSPLIT, $0-24")
	w("\tMOVQ dst+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ n+16(FP), CX")
	w("\tSHRQ $4, CX")
	w("\tJZ done")
	w("\tVMOVDQU one<>(SB), Y12")
	w("\tVMOVDQU half7fff<>(SB), Y13")
	w("\tVMOVDQU infbits<>(SB), Y14")
	w("\tVMOVDQU bf16nan<>(SB), Y15")
	w("loop:")
	for g := range 2 {
		x, r, m := g, 2+g, 4+g
		w("\tVMOVDQU %d(SI), Y%d", 32*g, x)
		w("\tVPSRLD $16, Y%d, Y%d", x, r)
		w("\tVPAND Y12, Y%d, Y%d", r, r)
		w("\tVPADDD Y%d, Y%d, Y%d", x, r, r)
		w("\tVPADDD Y13, Y%d, Y%d", r, r)
		w("\tVPSRLD $16, Y%d, Y%d", r, r)
		w("\tVPAND absmask<>(SB), Y%d, Y%d", x, m)
		w("\tVPCMPGTD Y14, Y%d, Y%d", m, m)
		w("\tVPBLENDVB Y%d, Y15, Y%d, Y%d", m, r, r)
	}
	w("\tVPACKUSDW Y3, Y2, Y2")
	w("\tVPERMQ $0xd8, Y2, Y2")
	w("\tVMOVDQU Y2, (DI)")
	loopEnd(64, 32)
}

// loopEnd ends a kernel of one loop counted down in CX: advance SI and DI
// by the bytes of a step, loop, and return.
func loopEnd(src, dst int) {
	w("\tADDQ $%d, SI", src)
	w("\tADDQ $%d, DI", dst)
	w("\tDECQ CX")
	w("\tJNZ loop")
	w("done:")
	w("\tVZEROUPPER")
	w("\tRET")
	w("")
}

// dq8 writes dq8AVX512, quantizer8.quantizeFinite of ftz(src[i]·r) for
// 16 values at a time: the product (VMULPS, as Go's float32 multiply), its
// flush to a signed zero where the exponent is 0, the order key (the sign
// spread and flipped into the other bits), the key's run looked up in
// lut by its top 16 bits (VPGATHERDD), and the run's code plus one where
// the key's low 16 bits reach the run's step; VPMOVDB stores the codes.
func dq8() {
	w("// func dq8AVX512(out *byte, src *float32, n int, r float32, lut *uint32)")
	w("TEXT ·dq8AVX512(SB), NOSPLIT, $0-40")
	w("\tMOVQ out+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ n+16(FP), CX")
	w("\tVBROADCASTSS r+24(FP), Z15")
	w("\tMOVQ lut+32(FP), BX")
	w("\tSHRQ $4, CX")
	w("\tJZ done")
	w("\tVPBROADCASTD infbits<>(SB), Z14")
	w("\tVPBROADCASTD signbit<>(SB), Z13")
	w("\tVPBROADCASTD low17<>(SB), Z12")
	w("\tVPBROADCASTD low16<>(SB), Z11")
	w("\tVPBROADCASTD one<>(SB), Z10")
	w("loop:")
	w("\tVMULPS (SI), Z15, Z0")
	w("\tVPTESTMD Z14, Z0, K1")
	w("\tVPANDD Z13, Z0, Z1")
	w("\tVMOVDQA32 Z0, K1, Z1")
	w("\tVPSRAD $31, Z1, Z2")
	w("\tVPORD Z13, Z2, Z2")
	w("\tVPXORD Z1, Z2, Z2")
	w("\tVPSRLD $16, Z2, Z3")
	w("\tKXNORW K2, K2, K2")
	w("\tVPGATHERDD (BX)(Z3*4), K2, Z4")
	w("\tVPANDD Z12, Z4, Z5")
	w("\tVPANDD Z11, Z2, Z6")
	w("\tVPCMPUD $5, Z5, Z6, K3")
	w("\tVPSRLD $24, Z4, Z4")
	w("\tVPADDD Z10, Z4, K3, Z4")
	w("\tVPMOVDB Z4, (DI)")
	loopEnd(64, 16)
}

func main() {
	w("// Code generated by encode_amd64_gen.go. DO NOT EDIT.")
	w("")
	w("//go:build amd64 && !purego")
	w("")
	w("#include \"textflag.h\"")
	w("")
	w("// FP4 code thresholds (fp4ThresholdBits).")
	data("fp4thr", fp4)
	w("// The NF4 decision tree by level: the root t7, then the thresholds of")
	w("// the nodes at depth 1, 2 and 3 in path order (padded to 8 with t14).")
	data("nf4t7", repeat(nf4[7], 8))
	data("nf4l2", []uint32{nf4[3], nf4[11], nf4[14], nf4[14], nf4[14], nf4[14], nf4[14], nf4[14]})
	data("nf4l3", []uint32{nf4[1], nf4[5], nf4[9], nf4[13], nf4[14], nf4[14], nf4[14], nf4[14]})
	data("nf4l4", []uint32{nf4[0], nf4[2], nf4[4], nf4[6], nf4[8], nf4[10], nf4[12], nf4[14]})
	w("// The AVX-512 search tables, indexed by the code so far: the NF4")
	w("// thresholds t[c+3], t[c+1] and t[c], the FP4 ones t[c+1] and t[c]")
	w("// (clamped to the last), and fp4RankCode padded to 16.")
	data("nf4z2", clamped(nf4, 3))
	data("nf4z3", clamped(nf4, 1))
	data("nf4z4", clamped(nf4, 0))
	data("fp4z2", clamped(fp4, 1))
	data("fp4z3", clamped(fp4, 0))
	data("fp4rankz", []uint32{0, 1, 6, 7, 4, 5, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0})
	data("bit8", []uint32{8})
	data("hi16", []uint32{0xffff0000})
	w("// VPERMD indices that undo the lane interleaving of VPACKUSDW+VPACKUSWB.")
	data("packperm", []uint32{0, 4, 1, 5, 2, 6, 3, 7})
	w("// Byte weights 16, 1 for VPMADDUBSW: code[2j]<<4 + code[2j+1].")
	data("nibbles", repeat(0x01100110, 8))
	w("// Bits of an F16 moved to float32 position by a sign-extending shift.")
	data("f16mask", repeat(0x8fffe000, 8))
	data("absmask", repeat(0x7fffffff, 8))
	w("// -0x1p-126: s <= this is a negative s that the GPU does not flush.")
	data("negmin", repeat(0x80800000, 8))
	w("// fp4RankCode as dwords.")
	data("fp4rank", []uint32{0, 1, 6, 7, 4, 5, 2, 3})
	w("// The magnitude bits of 16 16-bit floats.")
	data("magmask", repeat(0x7fff7fff, 8))
	w("// Constants of float32 to BF16 rounding.")
	data("one", repeat(1, 8))
	data("half7fff", repeat(0x7fff, 8))
	data("infbits", repeat(0x7f800000, 8))
	data("bf16nan", repeat(0x7fc0, 8))
	w("// Constants of the double quantization's code selection.")
	data("signbit", []uint32{0x80000000})
	data("low17", []uint32{0x1ffff})
	data("low16", []uint32{0xffff})
	for _, format := range []string{"BF16", "F16", "F32"} {
		encoder("encode"+format+"NF4AVX2", format, false)
		encoder("encode"+format+"FP4AVX2", format, true)
	}
	for _, format := range []string{"BF16", "F16", "F32"} {
		encoder512("encode"+format+"NF4AVX512", format, false)
		encoder512("encode"+format+"FP4AVX512", format, true)
	}
	stats()
	stats32()
	round()
	dq8()
	w("// func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)")
	w("TEXT ·cpuid(SB), NOSPLIT, $0-24")
	w("\tMOVL eaxArg+0(FP), AX")
	w("\tMOVL ecxArg+4(FP), CX")
	w("\tCPUID")
	w("\tMOVL AX, eax+8(FP)")
	w("\tMOVL BX, ebx+12(FP)")
	w("\tMOVL CX, ecx+16(FP)")
	w("\tMOVL DX, edx+20(FP)")
	w("\tRET")
	w("")
	w("// func xgetbv0() (eax uint32)")
	w("TEXT ·xgetbv0(SB), NOSPLIT, $0-4")
	w("\tMOVL $0, CX")
	w("\tXGETBV")
	w("\tMOVL AX, eax+0(FP)")
	w("\tRET")
	if err := os.WriteFile("encode_amd64.s", buf.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}
