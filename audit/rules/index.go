package rules

import (
	"github.com/qconv/qconv/audit"
)

// usableIndex returns the checkpoint's index if the index decides which
// shards hold which tensors: it parsed, and no model.safetensors beside it
// overrides it.
func usableIndex(c *audit.Checkpoint) *audit.Index {
	if c.Index == nil || c.Index.Err != nil || c.BothLayouts {
		return nil
	}
	return c.Index
}

// shardFiles maps the base names of the checkpoint's files to them.
func shardFiles(c *audit.Checkpoint) map[string]*audit.File {
	m := map[string]*audit.File{}
	for _, f := range c.Files {
		m[f.Name] = f
	}
	return m
}
