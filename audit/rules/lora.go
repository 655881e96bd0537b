package rules

import (
	"errors"
	"path/filepath"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/convert/merge"
	"github.com/qconv/qconv/formats/checkpoint"
)

// The LORA rules check PEFT LoRA adapter directories with the parser and
// the checks of qconv merge (convert/merge), so that what audit accepts
// merges, and what it reports is what merge would refuse. Rules that
// compare the adapter with its base run only when audit is given one
// (--base).

// adapterDir returns the directory of an adapter checkpoint that holds an
// adapter_config.json, or "".
func loraDir(c *audit.Checkpoint) string {
	if !c.Adapter || !merge.IsAdapterDir(c.Dir) {
		return ""
	}
	return c.Dir
}

// adapterConfig reads and parses the adapter's adapter_config.json.
func adapterConfig(c *audit.Checkpoint) (*merge.Config, string, error) {
	dir := loraDir(c)
	if dir == "" {
		return nil, "", errNoAdapter
	}
	path := filepath.Join(dir, merge.AdapterConfigName)
	b, err := checkpoint.ReadFileLimited(path, 16<<20)
	if err != nil {
		return nil, path, err
	}
	cfg, err := merge.ParseConfig(b)
	return cfg, path, err
}

var errNoAdapter = errors.New("not an adapter directory")

// openAdapter opens the adapter leniently (unsupported settings are not an
// error). It fails for a config that does not parse (LORA001) or factors
// that do not fit together (LORA002).
func openAdapter(c *audit.Checkpoint) (*merge.Adapter, error) {
	dir := loraDir(c)
	if dir == "" {
		return nil, errNoAdapter
	}
	return merge.OpenAdapter(dir, true)
}

// openBase opens the base model given with --base, or returns nil.
func openBase(c *audit.Checkpoint) (*checkpoint.Checkpoint, error) {
	if c.Base == "" {
		return nil, nil
	}
	return checkpoint.Open(c.Base)
}

// withAdapterAndBase runs fn with the open adapter and base, when both
// open (the rules that need them report nothing otherwise: LORA001,
// LORA002 and the base path's own audit say why).
func withAdapterAndBase(p *audit.Pass, fn func(a *merge.Adapter, base *checkpoint.Checkpoint)) {
	a, err := openAdapter(p.Checkpoint)
	if err != nil {
		return
	}
	defer a.Close()
	base, err := openBase(p.Checkpoint)
	if err != nil || base == nil {
		return
	}
	defer base.Close()
	fn(a, base)
}
