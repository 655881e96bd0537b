package audit

import (
	"fmt"

	"github.com/qconv/qconv/internal/pyjson"
)

// ModelDType returns the model dtype that config.json records: the
// top-level "dtype" (transformers v5) or, failing that, "torch_dtype" (v4),
// and the key it came from. ok is false if neither is a string.
func (c *Config) ModelDType() (value, key string, ok bool) {
	if c == nil || c.Value == nil {
		return "", "", false
	}
	for _, k := range []string{"dtype", "torch_dtype"} {
		if s, isStr := c.Value.Get(k).AsString(); isStr {
			return s, k, true
		}
	}
	return "", "", false
}

// BnbConfig is the bitsandbytes 4-bit part of config.json's
// quantization_config, with transformers' defaults filled in for absent
// keys (BitsAndBytesConfig: quant type "fp4", no double quant, storage
// "uint8", compute dtype "float32").
type BnbConfig struct {
	// Method is quant_method ("" if absent).
	Method string
	// Load4bit reports load_in_4bit (or _load_in_4bit) true.
	Load4bit bool
	// QuantType is bnb_4bit_quant_type.
	QuantType string
	// DoubleQuant is bnb_4bit_use_double_quant.
	DoubleQuant bool
	// Storage is bnb_4bit_quant_storage, a torch dtype name.
	Storage string
	// Compute is bnb_4bit_compute_dtype, a torch dtype name.
	Compute string
	// Problems lists keys whose JSON value has the wrong type (their
	// defaults are used instead).
	Problems []string
}

// Is4bit reports whether the config describes a bitsandbytes 4-bit model.
func (b *BnbConfig) Is4bit() bool {
	return b != nil && b.Method == "bitsandbytes" && b.Load4bit
}

// Quantization returns quantization_config, or nil if config.json has
// none (or could not be read).
func (c *Config) Quantization() *pyjson.Value {
	if c == nil || c.Value == nil {
		return nil
	}
	q := c.Value.Get("quantization_config")
	if q.IsNull() {
		return nil
	}
	return q
}

// Bnb returns quantization_config read as a bitsandbytes config, or nil
// if there is no quantization_config object.
func (c *Config) Bnb() *BnbConfig {
	q := c.Quantization()
	if q.Kind() != pyjson.KindObject {
		return nil
	}
	b := &BnbConfig{QuantType: "fp4", Storage: "uint8", Compute: "float32"}
	str := func(key string, dst *string) {
		v := q.Get(key)
		if v.IsNull() {
			return
		}
		if s, ok := v.AsString(); ok {
			*dst = s
			return
		}
		b.Problems = append(b.Problems, fmt.Sprintf("%s is a JSON %s, not a string", key, v.Kind()))
	}
	boolean := func(key string, dst *bool) {
		v := q.Get(key)
		if v.IsNull() {
			return
		}
		if x, ok := v.AsBool(); ok {
			*dst = x
			return
		}
		b.Problems = append(b.Problems, fmt.Sprintf("%s is a JSON %s, not a boolean", key, v.Kind()))
	}
	str("quant_method", &b.Method)
	str("bnb_4bit_quant_type", &b.QuantType)
	str("bnb_4bit_quant_storage", &b.Storage)
	str("bnb_4bit_compute_dtype", &b.Compute)
	boolean("bnb_4bit_use_double_quant", &b.DoubleQuant)
	var l4, l4p bool
	boolean("load_in_4bit", &l4)
	boolean("_load_in_4bit", &l4p)
	b.Load4bit = l4 || l4p
	return b
}
