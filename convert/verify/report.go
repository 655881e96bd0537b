package verify

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Status is the verdict on one tensor.
type Status uint8

// The verdicts. Every status but StatusOK fails verification.
const (
	// StatusOK: a quantized weight within its bounds, or a dense tensor
	// identical to the original after the dtype cast.
	StatusOK Status = iota
	// StatusOutOfBounds: a quantized weight with an element, or a block's
	// absmax, further from the original than quantization allows.
	StatusOutOfBounds
	// StatusMismatch: a dense tensor whose values differ from the
	// original's (after the cast), or whose dtype cannot be compared.
	StatusMismatch
	// StatusInvalid: the tensors cannot be compared: different shapes,
	// or a quantized weight whose quant state is broken or incomplete.
	StatusInvalid
	// StatusMissing: in the original checkpoint only.
	StatusMissing
	// StatusExtra: in the quantized checkpoint only.
	StatusExtra
)

var statusNames = [...]string{"ok", "out-of-bounds", "mismatch", "invalid", "missing", "extra"}

// String returns the status's name as reports print it ("ok",
// "out-of-bounds", ...).
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText returns String's name, for JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// rank orders statuses for the summary: failures first.
func (s Status) rank() int {
	if s == StatusOK {
		return 1
	}
	return 0
}

// Kind says how a tensor is stored in the quantized checkpoint.
type Kind string

// The kinds of tensor.
const (
	KindQuantized Kind = "quantized" // a bitsandbytes 4-bit weight
	KindDense     Kind = "dense"     // anything else
)

// rank orders kinds for the summary: quantized weights first.
func (k Kind) rank() int {
	if k == KindQuantized {
		return 0
	}
	return 1
}

// Float is a measurement. JSON writes a NaN or an infinity as null, so
// that the report is always valid JSON.
type Float float64

// MarshalJSON writes f, or null if it is not finite.
func (f Float) MarshalJSON() ([]byte, error) {
	if math.IsInf(float64(f), 0) || math.IsNaN(float64(f)) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(f))
}

// Decibels is a signal-to-noise ratio in dB. It is +Inf when there is no
// error at all; JSON writes that as null.
type Decibels float64

// MarshalJSON writes d rounded to 0.001 dB, or null if it is not finite.
func (d Decibels) MarshalJSON() ([]byte, error) {
	f := float64(d)
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, math.Round(f*1000)/1000, 'f', -1, 64), nil
}

// String formats d with two decimals, "inf" for +Inf.
func (d Decibels) String() string {
	if math.IsInf(float64(d), 1) {
		return "inf"
	}
	return strconv.FormatFloat(float64(d), 'f', 2, 64)
}

// A TensorReport is the verdict on one tensor and the measurements behind
// it. Errors compare the original, cast to the dtype the quantized side
// uses (the quant state's dtype for a 4-bit weight), with the quantized
// side's values (dequantized in float32 for a 4-bit weight).
type TensorReport struct {
	Name    string `json:"name"`
	Kind    Kind   `json:"kind"`
	Status  Status `json:"status"`
	Message string `json:"message"`

	// DType is the dtype of the quantized side (a 4-bit weight's quant
	// state dtype); OrigDType that of the original.
	DType     string  `json:"dtype"`
	OrigDType string  `json:"original_dtype"`
	Shape     []int64 `json:"shape"`
	Elements  int64   `json:"elements"`
	// Transposed reports a 4-bit weight that transformers quantized as
	// the transpose of the original (a GPT-2 style Conv1D weight, stored
	// [in, out]; formats/arch says which): Shape is the original's, and
	// it is compared with the original transposed.
	Transposed bool `json:"transposed"`

	// Quantized weights only.
	QuantType   string `json:"quant_type"`
	Blocksize   int    `json:"blocksize"`
	DoubleQuant bool   `json:"double_quant"`

	MaxAbsError Float    `json:"max_abs_error"`
	RMSE        Float    `json:"rmse"`
	SNR         Decibels `json:"snr_db"`
	// BoundRatio is the largest element error as a fraction of its
	// bound (at most 1 when within bounds). Quantized weights only.
	BoundRatio Float `json:"bound_ratio"`
	// OutOfBounds counts elements whose error exceeds their bound,
	// BadAbsmax blocks whose stored absmax is off by more than its
	// rounding allows, NonFinite elements not checked because their block
	// holds a NaN or an infinity.
	OutOfBounds int64 `json:"out_of_bounds"`
	BadAbsmax   int64 `json:"bad_absmax_blocks"`
	NonFinite   int64 `json:"non_finite"`
	// Differing counts elements of a dense tensor that differ.
	Differing int64 `json:"differing"`

	acc acc
}

// Totals sums up a Report.
type Totals struct {
	Tensors   int `json:"tensors"`
	Quantized int `json:"quantized"`
	Dense     int `json:"dense"`
	Failed    int `json:"failed"`
	Missing   int `json:"missing"`
	Extra     int `json:"extra"`
	// Elements, MaxAbsError, RMSE and SNR are over the elements of all
	// quantized weights that were compared.
	Elements    int64    `json:"elements"`
	MaxAbsError Float    `json:"max_abs_error"`
	RMSE        Float    `json:"rmse"`
	SNR         Decibels `json:"snr_db"`
}

// A Report is the result of Compare.
type Report struct {
	Original  string `json:"original"`
	Quantized string `json:"quantized"`
	// Tensors lists every tensor of either checkpoint (a 4-bit weight's
	// quant-state tensors are part of it): failures first, by decreasing
	// BoundRatio; then the quantized weights that pass, by increasing SNR;
	// then the dense tensors that pass; ties by name.
	Tensors []*TensorReport `json:"tensors"`
	Totals  Totals          `json:"totals"`
}

// OK reports whether every tensor passed.
func (r *Report) OK() bool { return r.Totals.Failed == 0 }

// WriteJSON writes the report as one indented JSON object, with "ok" first.
//
// Every tensor object has every field, whatever its kind and status (a
// field that does not apply is 0, "" or false, and snr_db is null where
// there is no error), so that consumers can rely on the set of fields.
func (r *Report) WriteJSON(w io.Writer) error {
	for _, t := range r.Tensors {
		if t.Shape == nil {
			t.Shape = []int64{}
		}
	}
	b, err := json.MarshalIndent(struct {
		OK bool `json:"ok"`
		*Report
	}{r.OK(), r}, "", "  ")
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteText writes the report for people: one line per tensor, worst
// first, then the totals.
func (r *Report) WriteText(w io.Writer) error {
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tKIND\tTENSOR\tMAX|ERR|\tRMSE\tSNR dB\tBOUND\tNOTE")
	for _, t := range r.Tensors {
		kind := string(t.Kind)
		if t.Kind == KindQuantized && t.QuantType != "" {
			kind = t.QuantType
			if t.DoubleQuant {
				kind += "+dq"
			}
		}
		bound, maxErr, rmse, snr := "-", "-", "-", "-"
		if t.Kind == KindQuantized && t.Status != StatusInvalid && t.Status != StatusMissing && t.Status != StatusExtra {
			bound = strconv.FormatFloat(float64(t.BoundRatio), 'f', 3, 64)
		}
		if t.Status == StatusOK || t.Status == StatusOutOfBounds || t.Status == StatusMismatch && t.Differing > 0 {
			maxErr, rmse, snr = fmtG(float64(t.MaxAbsError)), fmtG(float64(t.RMSE)), t.SNR.String()
		}
		if t.Kind == KindDense && t.Status == StatusOK {
			maxErr, rmse, snr = "0", "0", "identical"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Status, kind, t.Name, maxErr, rmse, snr, bound, oneLine(t.Message))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for line := range strings.Lines(table.String()) {
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	tt := r.Totals
	verdict := "OK"
	if !r.OK() {
		verdict = "FAILED"
	}
	if _, err := fmt.Fprintf(w, "\n%s: %d tensors (%d quantized, %d dense), %d failed (%d missing, %d extra)\n",
		verdict, tt.Tensors, tt.Quantized, tt.Dense, tt.Failed, tt.Missing, tt.Extra); err != nil {
		return err
	}
	var err error
	if tt.Quantized == 0 {
		_, err = fmt.Fprintf(w, "no 4-bit weights in %s\n", r.Quantized)
	} else {
		_, err = fmt.Fprintf(w, "quantized weights: %d elements, max |err| %s, RMSE %s, SNR %s dB\n",
			tt.Elements, fmtG(float64(tt.MaxAbsError)), fmtG(float64(tt.RMSE)), tt.SNR)
	}
	return err
}

func fmtG(f float64) string { return strconv.FormatFloat(f, 'g', 4, 64) }

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// acc accumulates the comparison of one range of a tensor. Sums of
// squares are float64, kept per unit of work (a group of 256 blocks, or
// denseUnit elements) and added up in order at the end, so that reports do
// not depend on how the work was split into jobs.
type acc struct {
	n                int64 // elements compared
	cur              part  // sums of the current unit
	parts            []part
	maxErr           float64
	worst            float64 // largest err/bound
	out              int64
	firstOut         int64
	outErr, outBound float64
	badBlocks        int64
	firstBadBlock    int64
	badGot, badWant  float64
	nonFinite        int64
	diff, firstDiff  int64
	haveOut, haveBad bool
	haveDiff         bool
}

// part holds the sums of squares of one unit of work.
type part struct{ sumSq, sumErrSq float64 }

// add records an original value x and the value y it became.
func (a *acc) add(x, y float64) {
	e := math.Abs(x - y)
	a.n++
	a.cur.sumSq += x * x
	a.cur.sumErrSq += e * e
	if e > a.maxErr || e != e {
		a.maxErr = e
	}
}

// cut ends a unit of work.
func (a *acc) cut() {
	a.parts = append(a.parts, a.cur)
	a.cur = part{}
}

// sums returns the sums of squares of every unit, added in order.
func (a *acc) sums() part {
	var s part
	for _, p := range a.parts {
		s.sumSq += p.sumSq
		s.sumErrSq += p.sumErrSq
	}
	s.sumSq += a.cur.sumSq
	s.sumErrSq += a.cur.sumErrSq
	return s
}

// check is add plus the bound check of element i.
func (a *acc) check(i int64, x, y, bound float64) {
	a.add(x, y)
	e := math.Abs(x - y)
	if e > a.worst*bound { // rarely true: divide only then
		r := math.Inf(1)
		if bound > 0 {
			r = e / bound
		}
		a.worst = max(a.worst, r)
	}
	if !(e <= bound) {
		if !a.haveOut {
			a.haveOut, a.firstOut, a.outErr, a.outBound = true, i, e, bound
		}
		a.out++
	}
}

func (a *acc) badBlock(blk int64, got, want float64) {
	if !a.haveBad {
		a.haveBad, a.firstBadBlock, a.badGot, a.badWant = true, blk, got, want
	}
	a.badBlocks++
}

func (a *acc) differ(i int64) {
	if !a.haveDiff {
		a.haveDiff, a.firstDiff = true, i
	}
	a.diff++
}

// merge adds b, a later range of the same tensor, to a.
func (a *acc) merge(b *acc) {
	if b.haveOut && !a.haveOut {
		a.haveOut, a.firstOut, a.outErr, a.outBound = true, b.firstOut, b.outErr, b.outBound
	}
	if b.haveBad && !a.haveBad {
		a.haveBad, a.firstBadBlock, a.badGot, a.badWant = true, b.firstBadBlock, b.badGot, b.badWant
	}
	if b.haveDiff && !a.haveDiff {
		a.haveDiff, a.firstDiff = true, b.firstDiff
	}
	a.out += b.out
	a.badBlocks += b.badBlocks
	a.diff += b.diff
	a.nonFinite += b.nonFinite
	a.worst = math.Max(a.worst, b.worst)
	a.n += b.n
	a.maxErr = math.Max(a.maxErr, b.maxErr)
	a.parts = append(a.parts, b.parts...)
	if b.cur != (part{}) {
		a.parts = append(a.parts, b.cur)
	}
}

// mergeErrors adds the error measures of b, a whole tensor, to a.
func (a *acc) mergeErrors(b *acc) {
	a.n += b.n
	a.maxErr = math.Max(a.maxErr, b.maxErr)
	a.parts = append(a.parts, b.sums())
}

func (a *acc) rmse() float64 {
	if a.n == 0 {
		return 0
	}
	return math.Sqrt(a.sums().sumErrSq / float64(a.n))
}

// snr is 10·log10(Σx² / Σ(x−y)²), +Inf without error.
func (a *acc) snr() Decibels {
	s := a.sums()
	if s.sumErrSq == 0 {
		return Decibels(math.Inf(1))
	}
	return Decibels(10 * math.Log10(s.sumSq/s.sumErrSq))
}
