// Package arch knows, per transformers architecture, which checkpoint
// tensors transformers + bitsandbytes quantize to 4 bits and which they keep
// dense, and why. It is the one source of that knowledge for convert,
// dequant, verify and audit.
//
// The knowledge is data, not rules written by hand: table.json was made by
// scripts/archgen/gen_arch.py, which builds a tiny random model of every
// architecture that transformers offers through its Auto classes, saves it,
// loads it with BitsAndBytesConfig(load_in_4bit=True, ...) exactly as users
// do, saves the 4-bit model and records what happened to every tensor, and
// scripts/archgen/build_table.py, which condenses those records. Source
// names the transformers and bitsandbytes versions it came from; a new
// transformers release is a rerun of the two scripts, not a hunt.
//
// Tensor names are matched after Normalize, which replaces layer and
// expert indices by "*", so a 2-layer tiny model stands for an 80-layer
// one. The package does not read checkpoints (formats/checkpoint does) and
// does not decide anything the user overrides (convert's --skip and
// --include do).
package arch

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
)

//go:embed table.json
var tableJSON []byte

// Action is what transformers does with a checkpoint tensor.
type Action uint8

const (
	// Keep: the tensor is saved dense.
	Keep Action = iota
	// Quantize: the tensor is the weight of a torch.nn.Linear that
	// bitsandbytes replaces by Linear4bit.
	Quantize
	// QuantizeTransposed: the weight of a GPT-2 style Conv1D, stored as
	// [in, out]; transformers transposes it to [out, in] before
	// quantizing, and the quant state records the transposed shape.
	QuantizeTransposed
)

// Reasons a tensor is quantized or kept, as the table and qconv's plan
// name them.
const (
	ReasonLinear          = "linear"           // torch.nn.Linear weight: quantized
	ReasonConv1D          = "conv1d"           // GPT-2 Conv1D weight: quantized transposed
	ReasonOutputEmbedding = "output_embedding" // the model's output embedding (lm_head)
	ReasonTiedEmbedding   = "tied_embedding"   // tied to the input embedding
	ReasonKeepInFP32      = "keep_in_fp32"     // in the model's _keep_in_fp32_modules
	ReasonNotConverted    = "not_converted"    // a Linear in modules_to_not_convert (e.g. the last module)
	ReasonExpert          = "expert"           // a mixture-of-experts expert (fused or per-expert)
	ReasonRouter          = "router"           // a mixture-of-experts router / gate
	ReasonEmbedding       = "embedding"        // torch.nn.Embedding
	ReasonNorm            = "norm"             // a normalization layer
	ReasonLinearSubclass  = "linear_subclass"  // a subclass of nn.Linear: transformers converts exact nn.Linear only
	ReasonNotLinear       = "not_linear"       // a parameter of some other module
	ReasonNot2D           = "not_2d"           // not a matrix
	ReasonBias            = "bias"             // a bias
	ReasonNotWeight       = "not_a_linear_weight"
	ReasonNotFloat        = "not_float"
	ReasonFusedOnLoad     = "fused_on_load"  // merged into another parameter when loaded
	ReasonUnknownModule   = "unknown_module" // the generator could not name the module; the decision is still observed
	ReasonFallback        = "name_rule"      // no table entry: qconv's name rules decided
	ReasonPrequantized    = "prequantized"   // already 4-bit in the source and copied unchanged (merge into a 4-bit base)
	ReasonUserSkip        = "user_skip"      // --skip
	ReasonUserInclude     = "user_include"   // --include
)

// A Decision is what happens to one tensor.
type Decision struct {
	Action Action
	// Reason is one of the Reason constants.
	Reason string
	// F32 reports that transformers stores the kept tensor as float32
	// whatever the model dtype (a parameter created in float32, such as
	// DeepSeek's e_score_correction_bias).
	F32 bool
}

// Quantized reports whether the tensor becomes 4-bit.
func (d Decision) Quantized() bool { return d.Action != Keep }

// An Arch is what the table knows about one architecture class.
type Arch struct {
	// Class is the architecture class, config.json's "architectures"[0].
	Class string
	// ModelType is config.json's "model_type".
	ModelType string
	// Kind is the Auto mapping the class came from (causal_lm,
	// seq2seq_lm, image_text_to_text, speech_seq2seq, masked_lm,
	// sequence_classification).
	Kind string
	// OutputEmbedding is the module transformers keeps as the output
	// embedding ("lm_head"), if any.
	OutputEmbedding string
	// SubconfigDType lists the dotted paths of the sub-configs of
	// config.json ("text_config", "vlm_config.vision_config", ...) into
	// which transformers writes "dtype".
	SubconfigDType []string
	// ConfigModelType is the model_type transformers writes into
	// config.json when it is not the one it read (a model_type that reuses
	// another's class, such as gpt-sw3's GPT2LMHeadModel), else "".
	ConfigModelType string
	// Refuse, when not empty, says why a 4-bit conversion of this
	// architecture cannot be one that transformers writes or loads.
	Refuse string

	tensors map[string]Decision // by normalized name
	exact   map[string]Decision // by full name, where a normalized name was ambiguous
	tails   map[string]*Decision
}

// Table is the whole table. Its entries are decoded when first asked for
// (Default is on the start-up path of every convert, dequant, verify and
// audit, and a checkpoint needs one entry of several hundred).
type Table struct {
	// Transformers and Bitsandbytes are the versions the table came from.
	Transformers, Bitsandbytes string

	raw        map[string]json.RawMessage // entry key -> undecoded entry
	rawUnbuilt map[string]json.RawMessage

	mu          sync.Mutex
	archs       map[string]*Arch // decoded entries
	byModelType map[string][]*Arch
}

type rawTable struct {
	Source struct {
		Transformers string `json:"transformers"`
		Bitsandbytes string `json:"bitsandbytes"`
	} `json:"source"`
	Architectures map[string]json.RawMessage `json:"architectures"`
	Unbuilt       map[string]json.RawMessage `json:"unbuilt"`
}

type rawArch struct {
	ModelType       string            `json:"model_type"`
	ConfigModelType string            `json:"config_model_type"`
	Kind            string            `json:"kind"`
	OutputEmbedding string            `json:"output_embedding"`
	SubconfigDType  []string          `json:"subconfig_dtype"`
	Refuse          string            `json:"refuse"`
	Tensors         map[string]string `json:"tensors"`
	Exact           map[string]string `json:"exact"`
}

// ParseDecision parses the table's encoding of a decision: "q", "t",
// "k:REASON" or "k:REASON:F32".
func ParseDecision(s string) (Decision, error) {
	switch s {
	case "q":
		return Decision{Action: Quantize, Reason: ReasonLinear}, nil
	case "t":
		return Decision{Action: QuantizeTransposed, Reason: ReasonConv1D}, nil
	}
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "k" || parts[1] == "" {
		return Decision{}, fmt.Errorf("arch: bad decision %q", s)
	}
	d := Decision{Action: Keep, Reason: parts[1]}
	if len(parts) == 3 {
		if parts[2] != "F32" {
			return Decision{}, fmt.Errorf("arch: bad decision %q", s)
		}
		d.F32 = true
	}
	return d, nil
}

// Parse reads a table in table.json's format and decodes every entry,
// reporting the first malformed one.
func Parse(data []byte) (*Table, error) {
	t, err := parseLazy(data)
	if err != nil {
		return nil, err
	}
	for key := range t.raw {
		if _, err := t.entry(key); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// parseLazy reads the table's layout, leaving its entries undecoded.
func parseLazy(data []byte) (*Table, error) {
	var raw rawTable
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("arch: table: %v", err)
	}
	return &Table{
		Transformers: raw.Source.Transformers, Bitsandbytes: raw.Source.Bitsandbytes,
		raw: raw.Architectures, rawUnbuilt: raw.Unbuilt, archs: make(map[string]*Arch),
	}, nil
}

// entry decodes the entry key (once), or returns nil if there is none.
func (t *Table) entry(key string) (*Arch, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.entryLocked(key)
}

func (t *Table) entryLocked(key string) (*Arch, error) {
	if a, ok := t.archs[key]; ok {
		return a, nil
	}
	data, ok := t.raw[key]
	if !ok {
		return nil, nil
	}
	var ra rawArch
	if err := json.Unmarshal(data, &ra); err != nil {
		return nil, fmt.Errorf("arch: table: entry %s: %v", key, err)
	}
	class, _, _ := strings.Cut(key, "@")
	a := &Arch{Class: class, ModelType: ra.ModelType, Kind: ra.Kind, OutputEmbedding: ra.OutputEmbedding,
		SubconfigDType: ra.SubconfigDType, ConfigModelType: ra.ConfigModelType, Refuse: ra.Refuse,
		tensors: make(map[string]Decision, len(ra.Tensors)), exact: make(map[string]Decision, len(ra.Exact))}
	for n, s := range ra.Tensors {
		d, err := ParseDecision(s)
		if err != nil {
			return nil, fmt.Errorf("%v (architecture %s, tensor %q)", err, key, n)
		}
		a.tensors[n] = d
	}
	for n, s := range ra.Exact {
		d, err := ParseDecision(s)
		if err != nil {
			return nil, fmt.Errorf("%v (architecture %s, tensor %q)", err, key, n)
		}
		a.exact[n] = d
	}
	a.buildTails()
	t.archs[key] = a
	return a, nil
}

// must returns the entry key of the embedded table, whose every entry the
// package's tests decode.
func (t *Table) must(key string) *Arch {
	a, err := t.entry(key)
	if err != nil {
		panic(err)
	}
	return a
}

// byType returns the entries of a model_type, causal LMs first.
func (t *Table) byType(modelType string) []*Arch {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byModelType == nil {
		t.byModelType = map[string][]*Arch{}
		for key := range t.raw {
			a, err := t.entryLocked(key)
			if err != nil {
				panic(err)
			}
			t.byModelType[a.ModelType] = append(t.byModelType[a.ModelType], a)
		}
		for _, as := range t.byModelType {
			sort.Slice(as, func(i, j int) bool {
				if ri, rj := kindRank(as[i].Kind), kindRank(as[j].Kind); ri != rj {
					return ri < rj
				}
				return as[i].Class < as[j].Class
			})
		}
	}
	return t.byModelType[modelType]
}

func kindRank(k string) int {
	for i, s := range []string{"causal_lm", "image_text_to_text", "seq2seq_lm", "speech_seq2seq", "masked_lm", "sequence_classification"} {
		if s == k {
			return i
		}
	}
	return 99
}

var (
	defaultOnce  sync.Once
	defaultTable *Table
	defaultErr   error
)

// Default returns the table embedded in qconv (parsed once).
func Default() *Table {
	defaultOnce.Do(func() { defaultTable, defaultErr = parseLazy(tableJSON) })
	if defaultErr != nil {
		// The embedded table is checked by the package's tests.
		panic(defaultErr)
	}
	return defaultTable
}

// Len is the number of entries of the table: architecture classes, and
// classes that another model_type reuses with other tensors or config
// ("GPT2LMHeadModel@gpt-sw3").
func (t *Table) Len() int { return len(t.raw) }

// Arch returns the entry of the given class (the class's own model_type),
// or nil.
func (t *Table) Arch(class string) *Arch { return t.must(class) }

// Keys returns the table's entry keys ("Class" or "Class@model_type"),
// sorted.
func (t *Table) Keys() []string {
	out := make([]string, 0, len(t.raw))
	for c := range t.raw {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// Unbuilt returns why the generator could not build class, if it tried
// and failed (such classes are unknown to the table).
func (t *Table) Unbuilt(class string) (string, bool) {
	data, ok := t.rawUnbuilt[class]
	if !ok {
		return "", false
	}
	var u struct {
		Error string `json:"error"`
	}
	json.Unmarshal(data, &u) // the embedded table is valid JSON
	return u.Error, true
}

// Lookup finds the architecture of a checkpoint from its config.json's
// "architectures" list and "model_type": the first listed class the table
// knows (its entry for that model_type where the model_type reuses the
// class differently), else, with no class listed, the table's first class
// of that model_type (a causal LM where there is one). It returns nil when
// the table does not know the model.
func (t *Table) Lookup(architectures []string, modelType string) *Arch {
	for _, c := range architectures {
		if a := t.must(c + "@" + modelType); a != nil {
			return a
		}
		if a := t.must(c); a != nil {
			return a
		}
	}
	if len(architectures) == 0 {
		if as := t.byType(modelType); len(as) > 0 {
			return as[0]
		}
	}
	return nil
}

// Normalize replaces every all-digit component of a dotted tensor name by
// "*", and the digits of a component that ends in "_<digits>" after a
// letter-led prefix by "*": "model.layers.12.mlp.experts.3.w1.weight"
// becomes "model.layers.*.mlp.experts.*.w1.weight" and
// "ffn.experts.expert_7.fc1.weight" becomes "ffn.experts.expert_*.fc1.weight"
// (scripts/archgen/build_table.py's normalize, which must agree).
func Normalize(name string) string {
	if !strings.ContainsAny(name, "0123456789") {
		return name
	}
	parts := strings.Split(name, ".")
	for i, p := range parts {
		if isDigits(p) {
			parts[i] = "*"
			continue
		}
		if j := strings.LastIndexByte(p, '_'); j > 0 && isDigits(p[j+1:]) && isLetter(p[0]) && isWord(p[:j]) {
			parts[i] = p[:j] + "_*"
		}
	}
	return strings.Join(parts, ".")
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// isWord reports whether s is made of ASCII letters, digits and '_'.
func isWord(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isLetter(c) && !(c >= '0' && c <= '9') && c != '_' {
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// tail is the part of a normalized name after its last "*" component, or
// "" when it has none.
func tail(n string) string {
	i := strings.LastIndex(n, ".*.")
	if i < 0 {
		return ""
	}
	return n[i+3:]
}

// buildTails indexes the decisions by tail, for names the tiny model did
// not have (a layer type that appears only in deeper models): a tail whose
// patterns all agree decides; one with disagreeing patterns decides nothing.
func (a *Arch) buildTails() {
	a.tails = map[string]*Decision{}
	for n, d := range a.tensors {
		tl := tail(n)
		if tl == "" {
			continue
		}
		if prev, ok := a.tails[tl]; ok {
			if prev != nil && *prev != d {
				a.tails[tl] = nil
			}
			continue
		}
		d := d
		a.tails[tl] = &d
	}
}

// Decide returns transformers' decision for the checkpoint tensor name, and
// false when the table cannot tell (a tensor the tiny model did not have and
// whose name's tail is ambiguous or unknown).
func (a *Arch) Decide(name string) (Decision, bool) {
	if d, ok := a.exact[name]; ok {
		return d, true
	}
	n := Normalize(name)
	if d, ok := a.tensors[n]; ok {
		return d, true
	}
	if tl := tail(n); tl != "" {
		if d := a.tails[tl]; d != nil {
			return *d, true
		}
	}
	return Decision{}, false
}

// QuantizesAnything reports whether transformers quantizes any tensor of the
// architecture.
func (a *Arch) QuantizesAnything() bool {
	for _, d := range a.tensors {
		if d.Quantized() {
			return true
		}
	}
	for _, d := range a.exact {
		if d.Quantized() {
			return true
		}
	}
	return false
}

// Transposed reports whether the architecture quantizes any weight
// transposed (GPT-2 style Conv1D).
func (a *Arch) Transposed() bool {
	for _, d := range a.tensors {
		if d.Action == QuantizeTransposed {
			return true
		}
	}
	return false
}
