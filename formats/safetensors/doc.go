// Package safetensors reads and writes safetensors files, the tensor
// container used by Hugging Face transformers.
//
// A file is an 8-byte little-endian header length N, N bytes of JSON
// header (an object mapping tensor names to {"dtype", "shape",
// "data_offsets"}, plus an optional "__metadata__" object of strings), and
// the data section, whose byte ranges the data_offsets give.
//
// [NewReader] and [Open] read only the header and check every structural
// rule there, before returning: a file that opens is fully consistent, and
// a file that does not yields a [*FormatError] whose [Code] names the
// broken rule (the auditor maps codes to rule IDs). The reader is stricter
// than the reference implementation in a few documented ways (duplicate
// keys, unknown keys in tensor entries, aliased tensors, null metadata),
// because qconv refuses to guess what a file means. Tensor data is read on
// demand through io.SectionReader, so inspecting a 100 GB checkpoint reads
// kilobytes.
//
// [NewPlan] and [Writer] produce files byte-identical to the reference
// writer (the safetensors Rust crate, as used by transformers): the header
// is planned from names, dtypes and shapes alone, so tensor data can then
// be streamed, or written in parallel at the planned offsets.
//
// This package does not interpret tensor contents (see formats/dtype and
// formats/bnb), and knows nothing of sharded checkpoints or index files
// (see formats/checkpoint).
package safetensors
