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
// bitsandbytes 4-bit base is merged as PEFT merges it
// (peft 0.21, lora.bnb.Linear4bit.merge, on CUDA) when the output keeps the
// base's 4-bit settings (OutputAuto, the default): a 4-bit weight that no
// adapter changes is copied unchanged, packed bytes and quant state; a
// merged one is dequantized exactly as bitsandbytes' dequantize_4bit does
// (convert/dequant, in the quant state's dtype), its float32 delta added
// in float32 (one rounding), and that float32 tensor quantized with the
// base's quant type, block size and double quantization, so its quant
// state records dtype float32, as PEFT's does. On the reference data
// (testdata/peft/llama-merged-nf4*, made by scripts/gen_peft_nf4_refs.py)
// every packed and absmax byte equals PEFT's. A base whose packed codes
// are not stored as uint8 (bnb_4bit_quant_storage) is requantized whole
// with uint8 storage. With OutputQuantized every 4-bit weight is
// requantized from the model dtype with Options.Convert's settings, so
// that the output equals convert of the dense merge (OutputDense).
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
