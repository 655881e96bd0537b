// Package convert turns a float32/bfloat16/float16 safetensors checkpoint
// into the bitsandbytes 4-bit (NF4 or FP4) checkpoint that transformers +
// bitsandbytes on CUDA would save, byte for byte, streaming with bounded
// memory on any number of CPUs. It is qconv's "convert" command.
//
// It is not a format library (formats/safetensors, formats/bnb and
// formats/checkpoint hold the file formats and the numerics), not a
// dequantizer (convert/dequant) and not a checker of existing 4-bit
// checkpoints (audit/).
//
// # Pipeline
//
// plan -> statistics -> layout -> quantization -> finish, the middle three
// per output file and overlapping:
//
//   - The plan (newPlan) is a pure function of the source's headers,
//     config.json and the Options: which tensors are quantized, the names,
//     dtypes and shapes of every output tensor, their order, and which
//     output file holds each (shards as huggingface_hub splits a state
//     dict). No tensor data is read. Every process of a partitioned run
//     (Options.Part) computes the same plan.
//   - With double quantization, statistics jobs read each quantized weight
//     once to compute its absmax values (formats/bnb.BlockAbsmaxRaw, on
//     the raw bytes) and their float32 mean (bitsandbytes' nested_offset,
//     bnb.CUDAMean, exactly as torch computes it on CUDA). The mean is
//     printed in the weight's quant-state JSON, whose length therefore
//     depends on the data and shifts every byte offset after it in its
//     file; an output file is laid out (formats/safetensors.NewPlan) and
//     created at its final size with its header once the statistics of
//     every quant state it holds are known. Without double quantization
//     there are no statistics jobs.
//   - Quantization jobs cut every tensor into jobs of at most J elements
//     (DefaultJobElements, fewer with many workers; for a quantized
//     tensor a whole number of 256-block double-quantization groups,
//     which is also J = 1 Mi at blocksize 4096). A job's tensor may be
//     written once every output file it writes to is laid out. Workers
//     read a job's bytes with ReadAt a sub-chunk (128 Ki elements) at a
//     time, and quantize them straight from the raw bytes
//     (bnb.QuantizeRaw: rounding to the model dtype, the NaN/Inf check and
//     the 4-bit codes in one pass), and write the packed bytes with
//     WriteAt at their planned offset, then ask the kernel to start
//     writing them back (sync_file_range on Linux) so that the file's
//     final fsync has little left to do. With double quantization each
//     job also turns its absmax values into 8-bit codes and nested absmax
//     values (bnb.DoubleQuantOffset, with the nested offset that the
//     statistics pass found: a job covers whole 256-block groups, which
//     depend on nothing else) and writes them; the worker that finishes
//     the last job of a weight writes the code books and the quant-state
//     JSON. Kept tensors are copied, or cast to the model dtype, the same
//     way.
//   - One stream of jobs carries both kinds, in order: the statistics jobs
//     of output file k+1 are handed out before the quantization jobs of
//     file k, so workers never wait for a layout, and the second read of
//     a file's weights follows the first closely (the page cache likely
//     still holds it). A single output file (the default below 50 GB of
//     output) gets all its statistics first.
//   - One pass where the layout allows it (fused.go): a JSON moves only
//     what follows it, so where a file's header comes out the same with
//     every JSON at its shortest and at its longest (nearly always: the
//     offsets' digits and the padding to 8 bytes rarely change within 21
//     bytes a weight), every offset is the shortest layout's plus the
//     lengthening of the JSONs before it. Such a file gets no statistics
//     jobs: its items are handed out in file order, each weight is read
//     once, its jobs write their packed codes as soon as the JSONs before
//     them are known (the weights handed out before; a job may wait for
//     the last ones of the weight before it) and keep their absmax values
//     in the weight's vector, and the weight's last job computes the mean,
//     publishes its JSON's length and double-quantizes the vector. The
//     header is written once every JSON of the file is known, and the
//     layout checks every offset. Other files keep the two passes.
//   - Kept tensors do not wait for the statistics: every offset in a file
//     only grows with the quant-state JSONs' lengths, which lie within 21
//     bytes of their shortest, and the kept tensors (F32/BF16/F16) come
//     before the 4-bit ones (U8) in a file, so their offsets come out the
//     same with every JSON at its shortest and at its longest, and hence
//     whatever the statistics find (placeEarly). Their files are created
//     before the statistics pass, and their jobs are handed out among the
//     statistics jobs, so that the output's writes (and the disk) start
//     while the weights are being read; the layout checks their offsets.
//   - The worker that writes the last bytes of an output file syncs and
//     closes it and records it as done, with the CRC-32C combined from
//     the CRCs of the pieces as they were written (state.go). Finally
//     model.safetensors.index.json (for a sharded output), config.json and
//     the copied files are written, and the work directory becomes the
//     destination (convert/internal/outdir.Install: one rename, the old
//     destination moved aside first, so that it never holds a mix of two
//     outputs; a rerun finishes an interrupted install).
//
// With Workers == 1 every job runs in order on the calling goroutine; that
// is the reference path, and the tests check that any number of workers
// writes the same bytes. The first error cancels the other jobs and is
// returned; it names the file and the tensor.
//
// Workers spend a third or more of their time in system calls (pwrite,
// madvise). A program that converts should run with a GOMAXPROCS a little
// above the number of workers, so that a goroutine woken while workers
// are in the kernel need not wait for a P: qconv's commands add 2
// (internal/procs), which made a 2 GB convert on 2 CPUs 15 % faster.
//
// # Memory
//
// Memory does not grow with the model. With w workers and jobs of J
// elements (J = 1 Mi up to 16 workers, halved while 4·J·w > 64 MiB, never
// below 256·blocksize), at most w jobs are alive, each holding one
// sub-chunk of input bytes (128 Ki elements, at most 512 KiB; on Linux,
// where the input file is mapped, instead up to 4 MiB of its pages in the
// page cache, the 2 MiB-aligned span around the sub-chunk), J/2 packed
// bytes and J/blocksize·4 bytes of absmax, and for kept tensors that
// change dtype a sub-chunk of float32 values and of output: about
// 0.6·J bytes + 1.5 MiB per worker. A job is handed out only while it is
// fewer than 8w+2 jobs ahead of the oldest unfinished one, so the
// per-tensor absmax vectors that the statistics pass, or a fused file's
// quantization jobs, fill (4 bytes per
// block: 2.8 MB for a 4096×11008 weight at blocksize 64, 55 MB for the
// largest Linear of a 405B model) exist for at most the tensors that
// overlap 8w+2 consecutive jobs (four 7B weights, two of a 405B model),
// plus up to four freed vectors kept for reuse. The second pass of a file
// that is not fused keeps none: each job double-quantizes its own blocks;
// a fused weight's last job double-quantizes its vector 64 Ki blocks at a
// time (64 KiB of codes per worker), and up to 2 writes per worker that
// wait for a JSON hold a job's packed codes (J/2 bytes each: 8 MiB at 16
// workers). Measured at 16 workers on 13.5 GB of bf16: 84 MiB peak RSS. For 2 workers
// converting a 7B bf16 model this is under 20 MiB live (25 MiB peak RSS
// measured).
//
// Everything else grows with the number of tensors, not their size, and
// is held once: the source headers as the safetensors reader parses them
// (about 110 bytes a tensor: its TensorInfo, name and shape, indexes),
// the checkpoint's and the plan's references to them (16 + 24), the plan
// (about 112 bytes a tensor, measured by TestMemoryPerTensor: an item of
// 72 bytes, entries of 8, whose names and shapes follow from the item,
// a reference to each in its file and the runner's offset of each), and
// while an output file is laid out about 40 more (its order and offsets;
// the header itself, 67 bytes a tensor in the example, is made
// again as it is written, never held). In all about 300 bytes a tensor.
// With 100,000 tensors or more the collector's goal is 25% over the live
// heap (GOGC=25 for the conversion) instead of 100%. Measured on 1,496,241
// one-byte tensors (a 99.9 MB header): 471 MiB peak RSS, 9 s on 2 cores;
// half as many take 257 MiB and 4.4 s.
//
// The price of the layout rule above, where a file cannot be fused, is
// I/O: every quantized weight of it is read twice (once for the
// statistics, once to quantize). The page cache usually holds the second
// read when it is larger than the weights of one output file.
//
// # Which tensors are quantized
//
// See the comment in select.go: 2-D F32/BF16/F16 ".weight" tensors whose
// module is not lm_head/embed_out, an embedding (embed*, wte, wpe,
// shared) or a norm; --skip and --include globs change that. Not
// supported: GPT-2 style Conv1D layers (transformers transposes them
// before quantizing; models whose config.json says model_type gpt2,
// openai-gpt, imagegpt or decision_transformer are refused), fused MoE
// expert tensors (3-D, kept dense as transformers does) and models with
// _keep_in_fp32_modules (pass --skip for those modules).
//
// # Output format
//
//   - Tensors: for each quantized weight W, W (U8 [(n+1)/2, 1]),
//     W.absmax (U8 codes with double quant, else F32), W.quant_map,
//     W.nested_absmax and W.nested_quant_map (double quant only) and
//     W.quant_state.bitsandbytes__<type>; kept floating-point tensors in
//     the model dtype; other tensors unchanged. Files are laid out as the
//     safetensors Rust crate does, with metadata {"format": "pt"}.
//   - Shards: DefaultMaxShardSize (50 GB, transformers v5) unless
//     Options.MaxShardSize; entries in state-dict order (source shard,
//     then module names in natural order, weight before bias, then each
//     weight's quant state in bitsandbytes' as_dict order) are split as
//     huggingface_hub's split_state_dict_into_shards_factory does, into
//     model-00001-of-0000N.safetensors. The index has metadata.total_size
//     (the sum of all tensor bytes) and total_parameters (transformers'
//     num_parameters() of the 4-bit model: kept elements plus twice the
//     packed bytes of each 4-bit weight). The state-dict order of the
//     original model is not recorded in a checkpoint, so this order is
//     inferred; no golden sharded 4-bit output exists to check it against.
//   - config.json: see Plan.ConfigJSON.
package convert
