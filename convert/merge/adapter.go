package merge

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/pyjson"
)

// File names of a PEFT adapter directory (PeftModel.save_pretrained).
const (
	AdapterConfigName  = "adapter_config.json"
	AdapterWeightsName = "adapter_model.safetensors"
)

// keyPrefix starts every tensor name of an adapter saved from a
// PeftModel (PeftModelForCausalLM and the other task wrappers): the
// PeftModel's base_model (a LoraModel) and its model, the transformers
// model whose module names the rest of the name follows.
const keyPrefix = "base_model.model."

// maxAdapterConfig bounds adapter_config.json (PEFT writes about 1 KB).
const maxAdapterConfig = 16 << 20

// A Config is the part of a PEFT LoraConfig (adapter_config.json) that
// decides a merge.
type Config struct {
	// PEFTType is "peft_type": LORA is the only one merged.
	PEFTType string
	// R and Alpha are the default rank and lora_alpha; RankPattern and
	// AlphaPattern override them per module (PEFT's get_pattern_key: the
	// first key, in file order, that matches the module name as the
	// regular expression (.*\.)?(KEY)$).
	R            int
	Alpha        float64
	RankPattern  []Pattern
	AlphaPattern []Pattern
	// RSLoRA scales by alpha/sqrt(r) instead of alpha/r (use_rslora).
	RSLoRA bool
	// FanInFanOut says the targeted layers store weights as (in, out),
	// GPT-2's Conv1D (fan_in_fan_out).
	FanInFanOut bool
	// Bias is "none", "all" or "lora_only"; the biases it trains are in
	// the adapter file and replace the base's.
	Bias string
	// TargetModules is target_modules as written: a list of names, or one
	// regular expression (TargetRegex).
	TargetModules []string
	TargetRegex   string
	// ModulesToSave lists modules saved whole in the adapter.
	ModulesToSave []string
	// BaseModel is base_model_name_or_path.
	BaseModel string
	// Unsupported lists the settings that make the adapter something this
	// merge does not do, one phrase each (empty when it is supported).
	Unsupported []string
}

// A Pattern is one entry of rank_pattern or alpha_pattern.
type Pattern struct {
	Key   string
	Value float64
	re    *regexp.Regexp
}

// lookup returns the value of the first pattern matching module.
func lookup(ps []Pattern, module string) (float64, bool) {
	for _, p := range ps {
		if p.re.MatchString(module) {
			return p.Value, true
		}
	}
	return 0, false
}

// Rank returns the rank of module (rank_pattern, else R).
func (c *Config) Rank(module string) int {
	if v, ok := lookup(c.RankPattern, module); ok {
		return int(v)
	}
	return c.R
}

// Scaling returns the float32 factor the delta of module is multiplied
// by: float32(alpha / r), or float32(alpha / sqrt(r)) with RSLoRA, alpha
// and r resolved through the patterns. PEFT computes the quotient as a
// Python float (float64) and torch rounds it to float32 when it multiplies
// a float32 tensor by it.
func (c *Config) Scaling(module string) float32 {
	alpha := c.Alpha
	if v, ok := lookup(c.AlphaPattern, module); ok {
		alpha = v
	}
	r := float64(c.Rank(module))
	if c.RSLoRA {
		return float32(alpha / math.Sqrt(r))
	}
	return float32(alpha / r)
}

// ParseConfig parses adapter_config.json.
func ParseConfig(b []byte) (*Config, error) {
	v, err := pyjson.Parse(b)
	if err != nil {
		return nil, err
	}
	if v.Kind() != pyjson.KindObject {
		return nil, fmt.Errorf("not a JSON object")
	}
	c := &Config{Bias: "none"}
	c.PEFTType, _ = v.Get("peft_type").AsString()
	if c.PEFTType == "" {
		return nil, fmt.Errorf("no peft_type")
	}
	if c.PEFTType != "LORA" {
		c.Unsupported = append(c.Unsupported, fmt.Sprintf("peft_type %s (only LORA adapters are merged)", c.PEFTType))
	}
	r, ok := v.Get("r").Int64()
	if c.PEFTType == "LORA" && (!ok || r <= 0 || r > 1<<20) {
		return nil, fmt.Errorf("r is %s, want a positive integer", v.Get("r").Literal())
	}
	c.R = int(r)
	c.Alpha = float64(c.R) // LoraConfig's default lora_alpha is 8 with r 8
	if a := v.Get("lora_alpha"); !a.IsNull() {
		if c.Alpha, ok = a.Float64(); !ok {
			return nil, fmt.Errorf("lora_alpha is %s, want a number", a.Literal())
		}
	}
	if c.RankPattern, err = patterns(v.Get("rank_pattern"), "rank_pattern", true); err != nil {
		return nil, err
	}
	if c.AlphaPattern, err = patterns(v.Get("alpha_pattern"), "alpha_pattern", false); err != nil {
		return nil, err
	}
	c.RSLoRA, _ = v.Get("use_rslora").AsBool()
	c.FanInFanOut, _ = v.Get("fan_in_fan_out").AsBool()
	if b := v.Get("bias"); !b.IsNull() {
		c.Bias, _ = b.AsString()
		if c.Bias != "none" && c.Bias != "all" && c.Bias != "lora_only" {
			return nil, fmt.Errorf("bias is %s, want \"none\", \"all\" or \"lora_only\"", b.Literal())
		}
	}
	switch tm := v.Get("target_modules"); tm.Kind() {
	case pyjson.KindString:
		c.TargetRegex, _ = tm.AsString()
	case pyjson.KindArray:
		for _, it := range tm.Items() {
			s, _ := it.AsString()
			c.TargetModules = append(c.TargetModules, s)
		}
	}
	for _, it := range v.Get("modules_to_save").Items() {
		s, _ := it.AsString()
		c.ModulesToSave = append(c.ModulesToSave, s)
	}
	c.BaseModel, _ = v.Get("base_model_name_or_path").AsString()

	// What a plain LoRA merge cannot do.
	flag := func(key, why string) {
		if b, _ := v.Get(key).AsBool(); b {
			c.Unsupported = append(c.Unsupported, key+" ("+why+")")
		}
	}
	flag("use_dora", "DoRA rescales each merged column by a learned magnitude; not supported")
	flag("use_qalora", "QA-LoRA pools its input; not supported")
	for _, key := range []string{"layer_replication", "trainable_token_indices", "target_parameters", "alora_invocation_tokens"} {
		if x := v.Get(key); !x.IsNull() && !(x.Kind() == pyjson.KindArray && x.Len() == 0) && !(x.Kind() == pyjson.KindObject && x.Len() == 0) {
			c.Unsupported = append(c.Unsupported, key+" (not supported by qconv merge)")
		}
	}
	return c, nil
}

// patterns parses rank_pattern or alpha_pattern, an object from module
// patterns to numbers, in file order (Python dicts keep insertion order,
// and get_pattern_key takes the first match).
func patterns(v *pyjson.Value, key string, integer bool) ([]Pattern, error) {
	if v.IsNull() {
		return nil, nil
	}
	if v.Kind() != pyjson.KindObject {
		return nil, fmt.Errorf("%s is not an object", key)
	}
	var ps []Pattern
	for _, m := range v.Members() {
		f, ok := m.Value.Float64()
		if ok && integer {
			n, isInt := m.Value.Int64()
			ok = isInt && n > 0 && n <= 1<<20
			f = float64(n)
		}
		if !ok {
			return nil, fmt.Errorf("%s[%q] is %s, want a %s", key, m.Key, m.Value.Literal(), map[bool]string{true: "positive integer", false: "number"}[integer])
		}
		re, err := regexp.Compile(`^(?:.*\.)?(?:` + m.Key + `)$`)
		if err != nil {
			return nil, fmt.Errorf("%s key %q is not a regular expression qconv can read: %v", key, m.Key, err)
		}
		ps = append(ps, Pattern{Key: m.Key, Value: f, re: re})
	}
	return ps, nil
}

// A Module is one LoRA-adapted module of the base model.
type Module struct {
	// Name is the module's name in the base model ("model.layers.0.mlp.up_proj").
	Name string
	// Embedding is set for an embedding's LoRA (lora_embedding_A/B): A is
	// [r, num_embeddings], B [embedding_dim, r]. Otherwise A is
	// lora_A.weight [r, in] and B lora_B.weight [out, r].
	Embedding bool
	A, B      checkpoint.Tensor
	// Bias is lora_B.bias (lora_bias=True), or nil.
	Bias *checkpoint.Tensor
}

// An Adapter is an open PEFT LoRA adapter directory.
type Adapter struct {
	// Dir is the directory; Weights the open adapter_model.safetensors.
	Dir     string
	Config  *Config
	Weights *checkpoint.Checkpoint
	// Modules are the adapted modules, sorted by name.
	Modules []*Module
	// Whole maps a base tensor name to the adapter tensor that replaces
	// it: modules_to_save, and the biases that bias="all"/"lora_only"
	// trains.
	Whole map[string]checkpoint.Tensor
}

// Close closes the adapter's weights file.
func (a *Adapter) Close() error { return a.Weights.Close() }

// ErrNotAdapter is returned by OpenAdapter (wrapped) for a path that is
// not a PEFT adapter directory.
var ErrNotAdapter = errors.New("not a PEFT adapter directory")

// IsAdapterDir reports whether dir holds an adapter_config.json.
func IsAdapterDir(dir string) bool {
	fi, err := os.Stat(filepath.Join(dir, AdapterConfigName))
	return err == nil && fi.Mode().IsRegular()
}

// OpenAdapter opens the PEFT adapter in dir: adapter_config.json and
// adapter_model.safetensors. It checks the adapter on its own (tensor
// names, which factors exist, dtypes, shapes against r); Plan checks it
// against a base model. Settings that cannot be merged are an error
// unless lenient (audit reads those adapters too, and reports them).
func OpenAdapter(dir string, lenient bool) (*Adapter, error) {
	cfgPath := filepath.Join(dir, AdapterConfigName)
	b, err := checkpoint.ReadFileLimited(cfgPath, maxAdapterConfig)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, "adapter_model.bin")); err == nil {
			return nil, fmt.Errorf("%s: %w (no %s; adapter_model.bin is a pickle, which qconv does not read)", dir, ErrNotAdapter, AdapterConfigName)
		}
		return nil, fmt.Errorf("%s: %w (no %s)", dir, ErrNotAdapter, AdapterConfigName)
	}
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", cfgPath, err)
	}
	if len(cfg.Unsupported) > 0 && !lenient {
		return nil, fmt.Errorf("%s: cannot merge this adapter: %s", cfgPath, strings.Join(cfg.Unsupported, "; "))
	}
	wpath := filepath.Join(dir, AdapterWeightsName)
	if _, err := os.Stat(wpath); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, "adapter_model.bin")); err == nil {
			return nil, fmt.Errorf("%s: no %s, only adapter_model.bin (a pickle, which qconv does not read; save the adapter with safe_serialization=True)", dir, AdapterWeightsName)
		}
		return nil, fmt.Errorf("%s: no %s", dir, AdapterWeightsName)
	}
	ck, err := checkpoint.Open(wpath)
	if err != nil {
		return nil, err
	}
	a := &Adapter{Dir: dir, Config: cfg, Weights: ck, Whole: map[string]checkpoint.Tensor{}}
	if err := a.index(); err != nil {
		ck.Close()
		return nil, err
	}
	return a, nil
}

// factor names a LoRA tensor suffix.
var factorSuffixes = []struct {
	suffix string
	emb    bool
	which  byte // 'A', 'B' or 'b' (lora_B bias)
}{
	{".lora_A.weight", false, 'A'},
	{".lora_B.weight", false, 'B'},
	{".lora_B.bias", false, 'b'},
	{".lora_embedding_A", true, 'A'},
	{".lora_embedding_B", true, 'B'},
}

// index sorts the adapter's tensors into modules and whole tensors.
func (a *Adapter) index() error {
	byName := map[string]*Module{}
	get := func(name string, emb bool) (*Module, error) {
		m := byName[name]
		if m == nil {
			m = &Module{Name: name, Embedding: emb}
			byName[name] = m
		} else if m.Embedding != emb {
			return nil, fmt.Errorf("%s: module %q has both Linear (lora_A/lora_B) and embedding (lora_embedding_A/B) factors", a.Weights.Path, name)
		}
		return m, nil
	}
	for _, t := range a.Weights.Tensors() {
		if !strings.HasPrefix(t.Name, keyPrefix) {
			return fmt.Errorf("%s: tensor %q: name does not start with %q (not saved from a PeftModel)", a.Weights.Path, t.Name, keyPrefix)
		}
		rest := t.Name[len(keyPrefix):]
		if strings.Contains(rest, "lora_magnitude_vector") {
			return fmt.Errorf("%s: tensor %q: a DoRA magnitude vector; DoRA adapters are not supported", a.Weights.Path, t.Name)
		}
		matched := false
		for _, f := range factorSuffixes {
			if !strings.HasSuffix(rest, f.suffix) {
				continue
			}
			matched = true
			m, err := get(strings.TrimSuffix(rest, f.suffix), f.emb)
			if err != nil {
				return err
			}
			switch f.which {
			case 'A':
				m.A = t
			case 'B':
				m.B = t
			case 'b':
				tt := t
				m.Bias = &tt
			}
			break
		}
		if matched {
			continue
		}
		if strings.Contains(rest, "lora_") {
			return fmt.Errorf("%s: tensor %q: unknown LoRA tensor (want lora_A.weight, lora_B.weight, lora_B.bias, lora_embedding_A or lora_embedding_B)", a.Weights.Path, t.Name)
		}
		// A whole tensor: modules_to_save (saved without the wrapper's
		// "modules_to_save.<adapter>" part) or a trained bias.
		name := strings.Replace(rest, ".modules_to_save.", ".", 1)
		if prev, ok := a.Whole[name]; ok {
			return fmt.Errorf("%s: tensors %q and %q both replace %q", a.Weights.Path, prev.Name, t.Name, name)
		}
		a.Whole[name] = t
	}
	for _, m := range byName {
		a.Modules = append(a.Modules, m)
	}
	slices.SortFunc(a.Modules, func(x, y *Module) int { return strings.Compare(x.Name, y.Name) })
	for _, m := range a.Modules {
		if err := a.checkModule(m); err != nil {
			return err
		}
	}
	return nil
}

// checkModule checks one module's factors on their own.
func (a *Adapter) checkModule(m *Module) error {
	path := a.Weights.Path
	aName, bName := "lora_A.weight", "lora_B.weight"
	if m.Embedding {
		aName, bName = "lora_embedding_A", "lora_embedding_B"
	}
	switch {
	case m.A.TensorInfo == nil:
		return fmt.Errorf("%s: module %q has %s but no %s", path, m.Name, bName, aName)
	case m.B.TensorInfo == nil:
		return fmt.Errorf("%s: module %q has %s but no %s", path, m.Name, aName, bName)
	}
	for _, t := range []checkpoint.Tensor{m.A, m.B} {
		if !floatDType(t.DType) {
			return fmt.Errorf("%s: tensor %q: dtype %v (want F32, BF16 or F16)", path, t.Name, t.DType)
		}
		if len(t.Shape) != 2 {
			return fmt.Errorf("%s: tensor %q: shape %s is not 2-D", path, t.Name, shapeString(t.Shape))
		}
	}
	r := int64(a.Config.Rank(m.Name))
	if m.A.Shape[0] != r || m.B.Shape[1] != r {
		return fmt.Errorf("%s: module %q: %s is %s and %s is %s, but its rank is %d (r and rank_pattern in %s)",
			path, m.Name, aName, shapeString(m.A.Shape), bName, shapeString(m.B.Shape), r, AdapterConfigName)
	}
	if m.Bias != nil {
		if !floatDType(m.Bias.DType) || len(m.Bias.Shape) != 1 || m.Bias.Shape[0] != m.B.Shape[0] {
			return fmt.Errorf("%s: tensor %q: %v %s does not fit %s %s", path, m.Bias.Name, m.Bias.DType, shapeString(m.Bias.Shape), bName, shapeString(m.B.Shape))
		}
	}
	return nil
}

// shapeString formats a shape as Python prints a list: "[4, 128]".
func shapeString(s []int64) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func floatDType(d dtype.DType) bool { return d == dtype.F32 || d == dtype.BF16 || d == dtype.F16 }
