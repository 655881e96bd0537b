// Package rules holds the rules of `qconv audit`, one rule per file. Each
// rule is an *audit.Rule value with a stable ID, a title, documentation
// (the text of `qconv audit --explain ID`), a default severity and the code
// that runs it.
//
// ID groups: ST structure of one safetensors file, IX sharded index, BNB
// bitsandbytes 4-bit tensors, ARCH which tensors the architecture lets
// transformers quantize (formats/arch), CFG config.json, NAME tensor
// names, LORA PEFT LoRA adapters, DEEP checks of tensor data (run only with --deep). IDs are never renumbered
// or reused; a retired rule keeps its number out of use.
//
// This package is NOT a framework: the driver, the checkpoint view and the
// output formats are in package audit.
package rules

import "github.com/qconv/qconv/audit"

// All returns every rule, sorted by group and ID. Each call returns new
// values, so callers may not affect each other.
func All() []*audit.Rule {
	rs := []*audit.Rule{
		st001(), st002(), st003(), st004(), st005(), st006(), st007(),
		st008(), st009(), st010(), st011(), st012(), st013(), st014(),
		st015(), st016(), st017(), st018(), st019(), st020(), st021(),
		st022(), st023(),
		ix001(), ix002(), ix003(), ix004(), ix005(), ix006(), ix007(), ix008(), ix009(),
		bnb001(), bnb002(), bnb003(), bnb004(), bnb005(), bnb006(), bnb007(), bnb008(), bnb009(), bnb010(), bnb011(), bnb012(), bnb013(),
		arch001(), arch002(), arch003(),
		cfg001(), cfg002(), cfg003(), cfg004(), cfg005(), cfg006(), cfg007(), cfg008(), cfg009(), cfg010(), cfg011(),
		name001(), name002(), name003(),
		lora001(), lora002(), lora003(), lora004(), lora005(), lora006(), lora007(),
		deep001(), deep002(), deep003(), deep004(), deep005(),
	}
	audit.SortRules(rs)
	return rs
}
