// Package outdir makes the output directory of convert and convert/dequant
// the way transformers' save_pretrained lays it out, safely:
//
//   - the order of the tensors (StateDictCompare), their split into
//     shards (Split, FileName) and the index of a sharded output
//     (WriteIndex);
//   - the checks on the destination (Check), the directory beside it in
//     which the output is built (Beside, MkTemp), and the move of the
//     finished output into place (Install), with --force semantics;
//   - the copy of the source's other files, tokenizer and such, leaving out
//     weights in other formats (CopyAux), and the small file helpers
//     (WriteFile, CopyFile).
//
// It does not write weight files (formats/safetensors does, driven by the
// pipelines) and knows nothing of quantization.
//
// Errors carry no package prefix: they are returned to convert or dequant,
// which add theirs ("convert: destination ... is not empty").
package outdir
