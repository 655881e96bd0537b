package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/formats/arch"
)

// dryRunTensor is one tensor of convert --dry-run --json.
type dryRunTensor struct {
	Name       string  `json:"name"`
	Shape      []int64 `json:"shape"`
	DType      string  `json:"dtype"`
	Action     string  `json:"action"` // "quantize" or "keep"
	OutDType   string  `json:"out_dtype"`
	Reason     string  `json:"reason"`
	Transposed bool    `json:"transposed,omitempty"`
	Bytes      int64   `json:"bytes"`
	OutBytes   int64   `json:"out_bytes"`
	File       string  `json:"file"`
}

// dryRun is convert --dry-run --json: the plan, before any data is read.
type dryRun struct {
	Src               string         `json:"src"`
	Architecture      string         `json:"architecture"`
	ModelType         string         `json:"model_type"`
	KnownArchitecture bool           `json:"known_architecture"`
	Table             string         `json:"table"`
	Warnings          []string       `json:"warnings"`
	Tensors           []dryRunTensor `json:"tensors"`
	TensorsQuantized  int            `json:"tensors_quantized"`
	TensorsKept       int            `json:"tensors_kept"`
	Parameters        int64          `json:"parameters"`
	InputBytes        int64          `json:"input_bytes"`
	OutputBytes       int64          `json:"output_bytes"`
	BitsPerWeight     float64        `json:"bits_per_weight"`
	Files             []string       `json:"files"`
}

// newDryRun describes p. The parameter count is the source's element
// count; bits per weight is the output's tensor bytes over it, as
// llama-quantize reports a model's size.
func newDryRun(src string, p *convert.Plan) dryRun {
	tb := arch.Default()
	d := dryRun{Src: src, Table: "transformers " + tb.Transformers + ", bitsandbytes " + tb.Bitsandbytes,
		Warnings: nonNil(p.Warnings), InputBytes: p.InputBytes, TensorsQuantized: p.Quantized, TensorsKept: p.Kept}
	if p.Arch != nil {
		d.Architecture, d.ModelType, d.KnownArchitecture = p.Arch.Class, p.Arch.ModelType, true
	}
	for _, t := range p.Tensors() {
		n := int64(1)
		for _, x := range t.Shape {
			n *= x
		}
		d.Parameters += n
		d.OutputBytes += t.OutBytes
		dt := dryRunTensor{Name: t.Name, Shape: nonNilShape(t.Shape), DType: strings.ToLower(t.SrcDType.String()), Action: "keep",
			OutDType: strings.ToLower(t.DType.String()), Reason: t.Reason, Transposed: t.Transposed,
			Bytes: t.SrcBytes, OutBytes: t.OutBytes, File: t.File}
		if t.Quantized {
			dt.Action, dt.OutDType = "quantize", t.QuantType.String()
		}
		d.Tensors = append(d.Tensors, dt)
	}
	for _, f := range p.Files {
		d.Files = append(d.Files, f.Name)
	}
	if d.Parameters > 0 {
		d.BitsPerWeight = float64(d.OutputBytes) * 8 / float64(d.Parameters)
	}
	return d
}

func nonNilShape(s []int64) []int64 {
	if s == nil {
		return []int64{}
	}
	return s
}

// printDryRun writes the plan as text: a header naming the architecture,
// a line per tensor ("[ 3/21] NAME [256, 64] bf16 -> nf4 (linear), 32.77 kB
// -> 9.27 kB"), then the totals.
func printDryRun(w io.Writer, d dryRun) {
	if d.KnownArchitecture {
		fmt.Fprintf(w, "plan for %s: %s (model_type %s), decided by qconv's table from %s\n", d.Src, d.Architecture, d.ModelType, d.Table)
	} else {
		fmt.Fprintf(w, "plan for %s: architecture not in qconv's table (%s); decided by name rules\n", d.Src, d.Table)
	}
	width := len(strconv.Itoa(len(d.Tensors)))
	for i, t := range d.Tensors {
		to := t.OutDType
		if t.Action == "keep" {
			to = "keep " + to
		}
		if t.Transposed {
			to += " transposed"
		}
		fmt.Fprintf(w, "[%*d/%d] %s %s %s -> %s (%s), %s -> %s\n", width, i+1, len(d.Tensors), t.Name, formatShape(t.Shape), t.DType,
			to, t.Reason, humanBytes(t.Bytes), humanBytes(t.OutBytes))
	}
	fmt.Fprintf(w, "total: %d quantized, %d kept; %s -> %s (%.2f bits per weight over %d parameters) in %d file(s)\n",
		d.TensorsQuantized, d.TensorsKept, humanBytes(d.InputBytes), humanBytes(d.OutputBytes), d.BitsPerWeight, d.Parameters, len(d.Files))
	for _, warn := range d.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
}
