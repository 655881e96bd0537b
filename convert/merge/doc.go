// Package merge folds a PEFT LoRA adapter into its base model: qconv's
// "merge" command. The result is what
//
//	PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(dst)
//
// writes (peft 0.21, transformers 5.17), but streamed with bounded memory on
// any CPU, and with every merged element correctly rounded (round.go says
// exactly what that means, how it is computed, and how it differs from
// PEFT's bytes).
//
// # How
//
// Merge is not a second pipeline: it presents the base model to
// convert.ConvertSource as a list of tensors whose bytes are computed when
// the pipeline reads them. A merged weight's reader reads the base values
// of the requested elements, loads the module's LoRA factors (once, into a
// small cache shared by the workers) and writes W + delta, correctly
// rounded to the output dtype; every other tensor is read from the base
// as it is. Convert then does what it does for any checkpoint: the plan,
// sharding and layout as transformers' save_pretrained, parallel workers
// over bounded jobs, progress, resume and partitioned runs, and, for a
// 4-bit output, quantization byte-identical to bitsandbytes. A 4-bit
// output of a merge is therefore byte-identical to convert of the dense
// merge: the bytes the quantizer reads are the same.
//
// # What an adapter may hold
//
//   - "<module>.lora_A.weight" [r, in] and "<module>.lora_B.weight"
//     [out, r]: LoRA on a Linear layer, or on a GPT-2 style Conv1D layer
//     whose weight is stored [in, out] when fan_in_fan_out is set;
//   - "<module>.lora_embedding_A" [r, num_embeddings] and
//     "<module>.lora_embedding_B" [dim, r]: LoRA on an embedding (PEFT
//     transposes B·A for embeddings always);
//   - "<module>.lora_B.bias" (lora_bias=True): added to the base bias,
//     scaled; PEFT refuses a layer without a bias, and so does Merge;
//   - any other tensor (modules_to_save, the biases bias="all" or
//     "lora_only" trains, an embedding's base weight that PEFT saves with
//     save_embedding_layers): it replaces the base tensor of the same name
//     ("<module>.base_layer.X" names the base's "<module>.X").
//
// Every name starts with "base_model.model.". The rank of each module is
// rank_pattern's (PEFT's get_pattern_key: the first key, in file order,
// that matches the module name as the regular expression (.*\.)?(KEY)$),
// else r, and likewise alpha; the scaling is alpha/r, or alpha/sqrt(r)
// with use_rslora. Refused, with the reason: other PEFT methods
// (peft_type other than LORA), DoRA (use_dora, lora_magnitude_vector),
// QA-LoRA, layer_replication, trainable_token_indices, target_parameters,
// aLoRA, and any adapter whose modules, shapes or whole tensors do not
// match the base. Check lists every mismatch at once; qconv audit reports
// adapters too.
//
// # Bases and outputs
//
// A dense base (F32, BF16, F16) is merged into its dtype (config.json's
// dtype, else the tensors' common one) or Options.Convert.DType. A
// bitsandbytes 4-bit base is dequantized exactly as bitsandbytes'
// dequantize_4bit does (convert/dequant), rounded to the quant state's
// dtype as dequantize_4bit returns it, merged, and by default requantized
// with the base's settings (quant type, block size, double quantization,
// compute dtype, the same 4-bit weights). PEFT (lora.bnb.Linear4bit.merge)
// instead quantizes the float32 sum dequantize_4bit(W) + delta without
// rounding it to the model dtype, and records float32 as the quant
// state's dtype; qconv rounds to the model dtype first, as transformers
// does when it loads and quantizes a dense checkpoint, so that the result
// equals convert of the dense merge. No PEFT bytes exist for that case to
// compare against (transformers 5.17 could not save the merged 4-bit
// model: revert_weight_conversion raised NotImplementedError).
//
// # Memory
//
// Convert's bound (see the convert package documentation), plus the LoRA
// factors of at most 2·Workers+4 modules (4·r·(rows+cols) bytes of float32
// factors and 8·(rows+cols) bytes of row and column statistics each:
// 1.1 MB for a 4096×11008 weight at r = 16, 35 MB for a 128256×4096
// embedding at r = 64), plus, per reading worker, the base values of one
// sub-chunk (at most 128 Ki elements: 512 KiB of float32 and their bytes).
package merge
