package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/pyjson"
)

const inspectUsage = `
usage: qconv inspect [--json] PATH

List the tensors of a checkpoint (name, dtype, shape, bytes, file) and its
totals: tensor count, bytes per dtype, logical parameters and, for 4-bit
checkpoints, the storage cost of the quantized weights in bits per weight.

PATH is a .safetensors file, or a directory holding model.safetensors or
model.safetensors.index.json and its shards. Only headers, the index and
config.json are read. The checkpoint must be consistent (use 'qconv audit'
to list the problems of one that is not).

Parameters are counted logically: a packed 4-bit weight counts as the
elements of its original shape (from its quant-state JSON) and its
quant-state tensors (absmax, quant_map, nested_*, quant_state) count zero.
A 4-bit weight is listed with its logical shape and quant type ("nf4 (U8)
[256, 64]"); --json gives its stored shape as "shape" and the logical one
as "logical_shape". Bits per weight of the whole model = 8 x (bytes of
all tensors) / (logical parameters), as llama.cpp's "BPW"; of the
quantized weights alone = 8 x (bytes of the packed weights and all their
quant-state tensors) / (logical elements of those weights).

--json writes one JSON object:
  path, layout ("file", "dir" or "sharded"), files (shard file names),
  config (null without config.json; else dtype, quant_method, quant_type,
    double_quant, quant_storage when present),
  tensors ([{name, dtype, shape, bytes, file, and for a 4-bit weight
    quant_type and logical_shape}], sorted by name),
  tensor_count, total_bytes, bytes_by_dtype ({"BF16": n, ...}),
  parameters (logical), bits_per_weight (whole model),
  quantized (null without 4-bit weights; else {weights, parameters, bytes,
    bits_per_weight}).
`

func inspectCommand() *command {
	return &command{
		name:    "inspect",
		summary: "list a checkpoint's tensors, sizes and parameter counts",
		run:     runInspect,
	}
}

func runInspect(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("inspect")
	asJSON := fs.Bool("json", false, "write one JSON object instead of text")
	pos, code, ok := parseFlags(fs, inspectUsage, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return usageError(stderr, "inspect", "expected one PATH, got %d arguments", len(pos))
	}
	c, err := checkpoint.Open(pos[0])
	if err != nil {
		printError(stderr, "inspect", err)
		return exitError
	}
	defer c.Close()
	rep, err := newInspectReport(c, *asJSON)
	if err != nil {
		printError(stderr, "inspect", err)
		return exitError
	}
	if *asJSON {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			printError(stderr, "inspect", err)
			return exitError
		}
		stdout.Write(append(b, '\n'))
		return exitOK
	}
	rep.writeText(stdout)
	return exitOK
}

// inspectReport is what inspect prints; its JSON form is the --json output
// (field names are a stable interface).
type inspectReport struct {
	Path          string           `json:"path"`
	Layout        string           `json:"layout"`
	Files         []string         `json:"files"`
	Config        *configSummary   `json:"config"`
	Tensors       []inspectTensor  `json:"tensors"`
	TensorCount   int              `json:"tensor_count"`
	TotalBytes    int64            `json:"total_bytes"`
	BytesByDType  map[string]int64 `json:"bytes_by_dtype"`
	Parameters    int64            `json:"parameters"`
	BitsPerWeight float64          `json:"bits_per_weight"`
	Quantized     *quantSummary    `json:"quantized"`

	countByDType map[string]int
	ck           *checkpoint.Checkpoint
	logical      map[string]inspectTensor // packed 4-bit weights: QuantType and LogicalShape
}

// rows calls f with each tensor's row, from Tensors or, without them,
// from the checkpoint.
func (rep *inspectReport) rows(f func(inspectTensor)) {
	if rep.Tensors != nil {
		for _, t := range rep.Tensors {
			f(t)
		}
		return
	}
	for _, t := range rep.ck.Tensors() {
		it := inspectTensor{Name: t.Name, DType: t.DType.String(), Shape: t.Shape, Bytes: t.Size(), File: t.Shard.Name}
		if q, ok := rep.logical[t.Name]; ok {
			it.QuantType, it.LogicalShape = q.QuantType, q.LogicalShape
		}
		f(it)
	}
}

type inspectTensor struct {
	Name  string  `json:"name"`
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
	Bytes int64   `json:"bytes"`
	File  string  `json:"file"`
	// QuantType and LogicalShape are set for a packed 4-bit weight: its
	// quant type and its shape before packing (from its quant state).
	QuantType    string  `json:"quant_type,omitempty"`
	LogicalShape []int64 `json:"logical_shape,omitempty"`
}

type configSummary struct {
	DType        string `json:"dtype,omitempty"`
	QuantMethod  string `json:"quant_method,omitempty"`
	QuantType    string `json:"quant_type,omitempty"`
	DoubleQuant  *bool  `json:"double_quant,omitempty"`
	QuantStorage string `json:"quant_storage,omitempty"`
}

type quantSummary struct {
	Weights       int     `json:"weights"`
	Parameters    int64   `json:"parameters"`
	Bytes         int64   `json:"bytes"`
	BitsPerWeight float64 `json:"bits_per_weight"`
}

// newInspectReport summarizes c. The per-tensor table (Tensors) is built
// only with withTensors (for --json); text output streams the rows from c
// (see rows), so that a header of millions of tensors is not held twice.
func newInspectReport(c *checkpoint.Checkpoint, withTensors bool) (*inspectReport, error) {
	rep := &inspectReport{
		Path:         c.Path,
		Layout:       c.Layout.String(),
		Files:        []string{},
		BytesByDType: make(map[string]int64),
		countByDType: make(map[string]int),
		ck:           c,
	}
	if withTensors {
		rep.Tensors = make([]inspectTensor, 0, len(c.Tensors()))
	}
	for _, s := range c.Shards {
		rep.Files = append(rep.Files, s.Name)
	}
	for _, t := range c.Tensors() {
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		dt := t.DType.String()
		if withTensors {
			rep.Tensors = append(rep.Tensors, inspectTensor{Name: t.Name, DType: dt, Shape: shape, Bytes: t.Size(), File: t.Shard.Name})
		}
		rep.TotalBytes += t.Size()
		rep.BytesByDType[dt] += t.Size()
		rep.countByDType[dt]++
	}
	rep.TensorCount = len(c.Tensors())
	p, err := c.Parameters()
	if err != nil {
		return nil, err
	}
	rep.Parameters = p.Total
	rep.BitsPerWeight = modelStats{parameters: p.Total, bytes: rep.TotalBytes}.bitsPerWeight()
	if err := rep.addLogicalShapes(c); err != nil {
		return nil, err
	}
	if p.PackedWeights > 0 {
		rep.Quantized = &quantSummary{Weights: p.PackedWeights, Parameters: p.Quantized, Bytes: p.PackedBytes, BitsPerWeight: p.BitsPerWeight()}
	}
	if c.Config != nil {
		rep.Config = summarizeConfig(c.Config)
	}
	return rep, nil
}

func summarizeConfig(cfg *pyjson.Value) *configSummary {
	s := &configSummary{}
	if v := cfg.Get("dtype"); v != nil {
		s.DType, _ = v.AsString()
	} else {
		s.DType, _ = cfg.Get("torch_dtype").AsString()
	}
	q := cfg.Get("quantization_config")
	s.QuantMethod, _ = q.Get("quant_method").AsString()
	s.QuantType, _ = q.Get("bnb_4bit_quant_type").AsString()
	if b, ok := q.Get("bnb_4bit_use_double_quant").AsBool(); ok {
		s.DoubleQuant = &b
	}
	s.QuantStorage, _ = q.Get("bnb_4bit_quant_storage").AsString()
	return s
}

func (rep *inspectReport) writeText(w io.Writer) {
	fmt.Fprintf(w, "path:        %s\n", rep.Path)
	files := "1 file"
	if len(rep.Files) != 1 {
		files = strconv.Itoa(len(rep.Files)) + " files"
	}
	fmt.Fprintf(w, "layout:      %s, %s\n", rep.Layout, files)
	if cs := rep.Config; cs != nil {
		var parts []string
		if cs.DType != "" {
			parts = append(parts, "dtype "+cs.DType)
		}
		if cs.QuantMethod != "" {
			q := cs.QuantMethod
			if cs.QuantType != "" {
				q += " " + cs.QuantType
			}
			if cs.DoubleQuant != nil && *cs.DoubleQuant {
				q += ", double quant"
			}
			if cs.QuantStorage != "" {
				q += ", storage " + cs.QuantStorage
			}
			parts = append(parts, q)
		}
		if len(parts) == 0 {
			parts = append(parts, "present")
		}
		fmt.Fprintf(w, "config:      %s\n", strings.Join(parts, "; "))
	}
	fmt.Fprintln(w)

	// The table is aligned as text/tabwriter would (columns two spaces
	// apart), but streamed: the widths are measured in a first pass, so
	// that a header of millions of tensors is not buffered a second time.
	cells := func(t inspectTensor) [5]string {
		dt, shape := t.DType, t.Shape
		if t.QuantType != "" {
			dt, shape = t.QuantType+" ("+t.DType+")", t.LogicalShape
		}
		return [5]string{displayName(t.Name), dt, formatShape(shape), strconv.FormatInt(t.Bytes, 10), displayName(t.File)}
	}
	head := [5]string{"NAME", "DTYPE", "SHAPE", "BYTES", "FILE"}
	var width [4]int
	measure := func(c [5]string) {
		for i := range width {
			width[i] = max(width[i], utf8.RuneCountInString(c[i]))
		}
	}
	measure(head)
	rep.rows(func(t inspectTensor) { measure(cells(t)) })
	bw := bufio.NewWriter(w)
	row := func(c [5]string) {
		for i := range width {
			bw.WriteString(c[i])
			bw.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(c[i])+2))
		}
		bw.WriteString(c[4])
		bw.WriteByte('\n')
	}
	row(head)
	rep.rows(func(t inspectTensor) { row(cells(t)) })
	bw.Flush()
	fmt.Fprintln(w)

	fmt.Fprintf(w, "tensors:     %d\n", rep.TensorCount)
	fmt.Fprintf(w, "size:        %s (%d bytes)\n", humanBytes(rep.TotalBytes), rep.TotalBytes)
	dts := make([]dtype.DType, 0, len(rep.BytesByDType))
	for name := range rep.BytesByDType {
		if d, ok := dtype.Parse(name); ok {
			dts = append(dts, d)
		}
	}
	slices.Sort(dts)
	for _, d := range dts {
		n := rep.countByDType[d.String()]
		plural := "s"
		if n == 1 {
			plural = ""
		}
		fmt.Fprintf(w, "  %-10s %s in %d tensor%s\n", d.String()+":", humanBytes(rep.BytesByDType[d.String()]), n, plural)
	}
	fmt.Fprintf(w, "parameters:  %d (%s), %.2f bpw over the whole model\n", rep.Parameters, humanCount(rep.Parameters), rep.BitsPerWeight)
	if q := rep.Quantized; q != nil {
		fmt.Fprintf(w, "quantized:   %d weights, %d parameters, %s with quant state, %.2f bpw\n",
			q.Weights, q.Parameters, humanBytes(q.Bytes), q.BitsPerWeight)
	}
}

// formatShape writes a shape as "[512, 128]" ("[]" for a scalar).
func formatShape(shape []int64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// addLogicalShapes gives each packed 4-bit weight its quant type and
// logical shape, from its quant-state JSON.
func (rep *inspectReport) addLogicalShapes(c *checkpoint.Checkpoint) error {
	// rep.Tensors is in c.Tensors' order, sorted by name: found by binary
	// search (a map of names would cost more than the table itself).
	names := make([]string, len(c.Tensors()))
	for i, t := range c.Tensors() {
		names[i] = t.Name
	}
	rep.logical = map[string]inspectTensor{}
	for _, pw := range checkpoint.FindPackedWeights(names) {
		t, ok := c.Tensor(pw.QuantState)
		if !ok || t.Size() > 1<<20 {
			continue // Parameters has checked these
		}
		b, err := t.ReadAll()
		if err != nil {
			return fmt.Errorf("%s: tensor %q: %w", t.Shard.Path, pw.QuantState, err)
		}
		shape, err := checkpoint.QuantStateShape(b)
		if err != nil {
			return fmt.Errorf("%s: tensor %q: %v", t.Shard.Path, pw.QuantState, err)
		}
		rep.logical[pw.Name] = inspectTensor{QuantType: pw.QuantType, LogicalShape: shape}
		i, found := slices.BinarySearchFunc(rep.Tensors, pw.Name, func(t inspectTensor, name string) int { return strings.Compare(t.Name, name) })
		if !found {
			continue
		}
		it := &rep.Tensors[i]
		it.QuantType, it.LogicalShape = pw.QuantType, shape
	}
	return nil
}

// modelStats are a checkpoint's logical parameters and tensor bytes.
type modelStats struct {
	parameters, bytes int64
}

// bitsPerWeight is the whole model's storage cost in bits per logical
// parameter, or 0 for a model without parameters.
func (m modelStats) bitsPerWeight() float64 {
	if m.parameters == 0 {
		return 0
	}
	return 8 * float64(m.bytes) / float64(m.parameters)
}

// modelSize reads the headers of the checkpoint at path and returns its
// modelStats, counted as inspect counts them.
func modelSize(path string) (modelStats, error) {
	c, err := checkpoint.Open(path)
	if err != nil {
		return modelStats{}, err
	}
	defer c.Close()
	p, err := c.Parameters()
	if err != nil {
		return modelStats{}, err
	}
	m := modelStats{parameters: p.Total}
	for _, t := range c.Tensors() {
		m.bytes += t.Size()
	}
	return m, nil
}

// displayName returns name as it is printed: as is when it is plain
// printable text, else quoted as Go's %q does, so that a name holding an
// escape sequence, a newline or other control characters cannot paint the
// terminal or forge a line of output.
func displayName(name string) string {
	for _, r := range name {
		if !unicode.IsPrint(r) || r == '"' || r == '\\' {
			return strconv.Quote(name)
		}
	}
	return name
}
