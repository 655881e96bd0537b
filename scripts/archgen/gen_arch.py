"""Architecture facts from transformers itself, for qconv's formats/arch table.

Run on a machine with torch, transformers, safetensors, accelerate and an
importable bitsandbytes (its CUDA library built, see ../shared/bitsandbytes):

    python3 scripts/archgen/gen_arch.py OUT [--workers N] [--deadline SECONDS]

For every architecture class that transformers offers through the Auto
mappings listed in AUTO (causal LM, seq2seq LM, image-text-to-text, speech
seq2seq, masked LM, sequence classification), it:

  1. builds a tiny config (shrink(): the config class's defaults with the
     size fields made small; nothing is downloaded),
  2. instantiates the model in bfloat16 on the CPU and save_pretrained()s
     it (the dense "source" checkpoint),
  3. loads that directory the way users do,
     from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True,
     bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
     bnb_4bit_compute_dtype=torch.bfloat16), dtype=torch.bfloat16, device_map="cuda:0"),
     and save_pretrained()s the 4-bit model,
  4. records, per checkpoint tensor, whether bitsandbytes quantized it and
     the module it belongs to in the loaded model (class, MRO), the model's
     _keep_in_fp32_modules, output embedding, tied weights, the
     quantizer's modules_to_not_convert, the checkpoint conversion mapping
     transformers applies for the model_type, and both config.json files.

The result is OUT/arch-records.jsonl (one JSON object per architecture);
scripts/archgen/build_table.py turns it into formats/arch's table. For the
families in REFERENCE it also keeps both checkpoints under
OUT/refs/<model_type>--<Class>/{src,out} (testdata/arch in the repo).
It also dumps the transformers sources that hold the rules
(OUT/transformers-src.tar.gz) so a reader can check them.

Everything is decided by transformers' and bitsandbytes' own code paths;
this script only observes what they did.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

AUTO = [
    ("causal_lm", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("seq2seq_lm", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    ("image_text_to_text", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
    ("speech_seq2seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
    ("masked_lm", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("sequence_classification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
]

# Families kept as reference checkpoints (model_type, auto kind).
REFERENCE = [
    ("llama", "causal_lm"), ("mistral", "causal_lm"), ("qwen2", "causal_lm"), ("qwen3", "causal_lm"),
    ("gemma", "causal_lm"), ("gemma2", "causal_lm"), ("gemma3_text", "causal_lm"), ("phi", "causal_lm"),
    ("phi3", "causal_lm"), ("gpt_neox", "causal_lm"), ("gptj", "causal_lm"), ("opt", "causal_lm"),
    ("bloom", "causal_lm"), ("starcoder2", "causal_lm"), ("gpt2", "causal_lm"), ("gpt_bigcode", "causal_lm"),
    ("falcon", "causal_lm"), ("mixtral", "causal_lm"), ("qwen2_moe", "causal_lm"), ("qwen3_moe", "causal_lm"),
    ("deepseek_v3", "causal_lm"), ("deepseek_v2", "causal_lm"), ("gpt_oss", "causal_lm"), ("llama4_text", "causal_lm"),
    ("olmoe", "causal_lm"), ("phimoe", "causal_lm"), ("granitemoe", "causal_lm"), ("dbrx", "causal_lm"),
    ("jamba", "causal_lm"), ("mamba", "causal_lm"), ("falcon_mamba", "causal_lm"), ("cohere", "causal_lm"),
    ("olmo2", "causal_lm"), ("stablelm", "causal_lm"), ("granite", "causal_lm"), ("codegen", "causal_lm"),
    ("mpt", "causal_lm"), ("biogpt", "causal_lm"), ("glm", "causal_lm"), ("nemotron", "causal_lm"),
    ("recurrent_gemma", "causal_lm"), ("qwen3_next", "causal_lm"), ("xglm", "causal_lm"), ("persimmon", "causal_lm"),
    ("t5", "seq2seq_lm"), ("bart", "seq2seq_lm"), ("mbart", "seq2seq_lm"), ("whisper", "speech_seq2seq"),
    ("llava", "image_text_to_text"), ("qwen2_vl", "image_text_to_text"), ("gemma3", "image_text_to_text"),
    ("paligemma", "image_text_to_text"), ("mistral3", "image_text_to_text"), ("idefics3", "image_text_to_text"),
    ("qwen2_5_vl", "image_text_to_text"), ("llava_next", "image_text_to_text"),
    ("bert", "masked_lm"), ("roberta", "masked_lm"), ("modernbert", "masked_lm"),
    ("llama", "sequence_classification"),
]

VOCAB = 256
# ARCHGEN_SCALE=2 doubles widths and depth (a second, differently shaped
# set for checking that the table generalizes beyond the models it came
# from); ARCHGEN_SEED changes the weights.
_SCALE = int(os.environ.get("ARCHGEN_SCALE", "1"))
SEED = int(os.environ.get("ARCHGEN_SEED", "1234"))
SIZE = {
    # hidden sizes
    "hidden_size": 64, "d_model": 64, "n_embd": 64, "embed_dim": 64, "model_dim": 64, "dim": 64,
    "word_embed_proj_dim": 64, "projection_dim": 64, "text_embed_dim": 64,
    # feed-forward sizes
    "intermediate_size": 128, "ffn_dim": 128, "d_ff": 128, "n_inner": 128, "decoder_ffn_dim": 128,
    "encoder_ffn_dim": 128, "ffn_hidden_size": 128, "mlp_dim": 128, "intermediate_size_mlp": 128,
    "hidden_dim": 128, "ffn_config_hidden": 128,
    # depth
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2, "encoder_layers": 2,
    "decoder_layers": 2, "num_decoder_layers": 2, "depth": 2, "text_layers": 2, "vision_layers": 2,
    # heads
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "n_heads": 4, "attention_heads": 4,
    "num_key_value_heads": 2, "n_kv_heads": 2, "num_kv_heads": 2, "multi_query_group_num": 2,
    "head_dim": 16, "d_kv": 16, "kv_channels": 16,
    # MLA (DeepSeek)
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    # MoE
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_top_k": 2, "top_k": 2, "moe_k": 2, "num_experts_per_token": 2,
    "moe_intermediate_size": 32, "expert_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    "decoder_sparse_step": 1, "interleave_moe_layer_step": 1,
    # hybrid layouts
    "full_attention_interval": 2, "attn_layer_period": 2, "attn_layer_offset": 1,
    "expert_layer_period": 2, "expert_layer_offset": 1,
    # positions and vocab
    "max_position_embeddings": 256, "n_positions": 256, "n_ctx": 256, "max_seq_len": 256,
    "max_source_positions": 64, "max_target_positions": 64, "seq_length": 256,
    "vocab_size": VOCAB,
    # vision / audio
    "image_size": 32, "patch_size": 8, "mm_tokens_per_image": 4, "num_mel_bins": 16,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
    # state-space
    "state_size": 8, "d_state": 8, "time_step_rank": 8, "mamba_d_state": 8, "lru_width": 64,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
}
if _SCALE > 1:
    for _k in ("hidden_size", "d_model", "n_embd", "embed_dim", "model_dim", "dim", "word_embed_proj_dim",
               "projection_dim", "text_embed_dim", "intermediate_size", "ffn_dim", "d_ff", "n_inner",
               "decoder_ffn_dim", "encoder_ffn_dim", "ffn_hidden_size", "mlp_dim", "intermediate_size_mlp",
               "hidden_dim", "head_dim", "d_kv", "kv_channels", "moe_intermediate_size", "lru_width",
               "num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers", "decoder_layers",
               "num_decoder_layers", "depth", "text_layers", "vision_layers", "out_hidden_size"):
        SIZE[_k] *= _SCALE
    SIZE["num_local_experts"] = SIZE["num_experts"] = SIZE["n_routed_experts"] = SIZE["moe_num_experts"] = 8
DROP = {"layer_types", "mlp_layer_types", "block_types", "layers_block_type", "attention_layers",
        "mlp_only_layers", "no_rope_layers", "moe_layers", "sliding_window_pattern_list"}


def shrink_dict(d, depth=0):
    out = {}
    for k, v in d.items():
        if k in DROP:
            continue
        if isinstance(v, dict) and depth < 3 and k.endswith("_config") and k != "quantization_config":
            out[k] = shrink_dict(v, depth + 1)
            continue
        if k in SIZE and isinstance(v, int) and not isinstance(v, bool):
            out[k] = SIZE[k]
            continue
        if (k.endswith("_token_id") or k.endswith("_token_index") or k == "pad_token_id") and isinstance(v, int) \
                and not isinstance(v, bool) and v >= VOCAB:
            out[k] = VOCAB - 1 - (hash(k) % 8)
            continue
        if k in ("rope_scaling", "rope_parameters") and isinstance(v, dict) and "mrope_section" in v:
            v = dict(v)
            v["mrope_section"] = [2, 3, 3]
        out[k] = v
    return out


def shrink(cfg_cls):
    base = cfg_cls().to_dict()
    d = shrink_dict(base)
    d.pop("transformers_version", None)
    d.pop("architectures", None)
    mt = d.pop("model_type", None)
    return cfg_cls(**{k: v for k, v in d.items() if k != "model_type"}), mt


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def read_tensor_bytes(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        a, b = h[name]["data_offsets"]
        f.seek(8 + n + a)
        return f.read(b - a)


def checkpoint_headers(d):
    files = sorted(x for x in os.listdir(d) if x.endswith(".safetensors"))
    out = {}
    for fn in files:
        for k, v in read_header(os.path.join(d, fn)).items():
            out[k] = {"dtype": v["dtype"], "shape": v["shape"], "file": fn}
    return out


def conversion_mapping(model_type, model):
    rec = {}
    try:
        from transformers import conversion_mapping as cm
        fn = getattr(cm, "get_checkpoint_conversion_mapping", None)
        items = fn(model_type) if fn else None
        rec["model_type"] = [describe_conv(o) for o in (items or [])]
    except Exception as e:  # noqa: BLE001
        rec["error"] = repr(e)
    try:
        from transformers import conversion_mapping as cm
        items = cm.get_model_conversion_mapping(model, add_legacy=False)
        rec["model"] = [describe_conv(o) for o in (items or [])]
    except Exception as e:  # noqa: BLE001
        rec["model_error"] = repr(e)
    m = getattr(model, "_checkpoint_conversion_mapping", None)
    if m:
        rec["class_mapping"] = {str(k): str(v) for k, v in dict(m).items()}
    return rec


def describe_conv(o):
    d = {"type": type(o).__name__}
    for attr in ("source_patterns", "target_patterns", "source_keys", "target_keys"):
        if hasattr(o, attr):
            v = getattr(o, attr)
            d[attr] = list(v) if isinstance(v, (list, tuple)) else [str(v)]
    ops = getattr(o, "operations", None)
    if ops:
        d["operations"] = [type(x).__name__ + json.dumps({k: repr(v) for k, v in vars(x).items()}) for x in ops]
    return d


def module_info(model):
    import torch.nn as nn
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # noqa: BLE001
        Conv1D = ()
    info = {}
    for name, mod in model.named_modules():
        mro = [c.__name__ for c in type(mod).__mro__]
        src = getattr(mod, "source_cls", None)
        for pname, p in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            full = f"{name}.{pname}" if name else pname
            info[full] = {
                "module": name, "module_class": type(mod).__name__, "mro": mro[:8],
                "is_linear": isinstance(mod, nn.Linear), "is_conv1d": bool(Conv1D) and isinstance(mod, Conv1D),
                "is_embedding": isinstance(mod, nn.Embedding), "param_class": type(p).__name__,
                "shape": list(p.shape), "dtype": str(p.dtype).replace("torch.", ""),
                "source_cls": src.__name__ if src is not None else None,
            }
    return info


def module_name_of(model, target):
    if target is None:
        return None
    for name, mod in model.named_modules():
        if mod is target:
            return name
    return None


def safe(fn, default=None):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return default if default is not None else {"error": repr(e)}


def jsonable(v):
    try:
        json.dumps(v)
        return v
    except Exception:  # noqa: BLE001
        if isinstance(v, dict):
            return {str(k): jsonable(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, set)):
            return [jsonable(x) for x in v]
        return repr(v)


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def run_one(kind, model_type, class_name, outdir, keep):
    import torch
    import transformers
    from transformers import BitsAndBytesConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    rec = {"kind": kind, "model_type": model_type, "class": class_name, "status": "error"}
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    tlog = logging.getLogger("transformers")
    tlog.addHandler(handler)
    tmp = tempfile.mkdtemp(prefix="archgen-")
    stage = "config"
    try:
        cls = getattr(transformers, class_name)
        cfg_cls = CONFIG_MAPPING[model_type]
        cfg, _ = shrink(cfg_cls)
        stage = "meta"
        with torch.device("meta"):
            meta = cls(cfg)
        n = sum(p.numel() for p in meta.parameters())
        rec["n_params"] = int(n)
        if n > 30_000_000:
            rec["error"] = f"tiny config still has {n} parameters"
            rec["meta_params"] = {k: list(p.shape) for k, p in meta.named_parameters()}
            return rec
        del meta
        stage = "build"
        torch.manual_seed(SEED)
        model = cls(cfg)
        model = model.to(torch.bfloat16)
        # Random norms and biases so that nothing is a trivial constant.
        with torch.no_grad():
            for k, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.02)
        src = os.path.join(tmp, "src")
        stage = "save-dense"
        model.save_pretrained(src)
        # Hub checkpoints rarely carry a dtype inside sub-configs; emulate them.
        cpath = os.path.join(src, "config.json")
        with open(cpath) as f:
            cj = json.load(f)
        stripped = []
        for k, v in cj.items():
            if isinstance(v, dict) and k.endswith("_config") and k != "quantization_config":
                for dk in ("dtype", "torch_dtype"):
                    if dk in v:
                        del v[dk]
                        stripped.append(f"{k}.{dk}")
        if stripped:
            with open(cpath, "w") as f:
                f.write(json.dumps(cj, indent=2, sort_keys=True) + "\n")
        rec["stripped_subconfig_dtypes"] = stripped
        rec["dense_model"] = module_info(model)
        rec["dense_output_embeddings"] = safe(lambda: module_name_of(model, model.get_output_embeddings()))
        rec["conversion"] = conversion_mapping(model_type, model)
        del model
        stage = "load-4bit"
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        qm = cls.from_pretrained(src, quantization_config=q, dtype=torch.bfloat16, device_map="cuda:0")
        rec["quantized_model"] = module_info(qm)
        rec["keep_in_fp32_modules"] = jsonable(getattr(qm, "_keep_in_fp32_modules", None))
        rec["keep_in_fp32_modules_strict"] = jsonable(getattr(qm, "_keep_in_fp32_modules_strict", None))
        rec["tied_weights_keys"] = jsonable(safe(lambda: getattr(qm, "_tied_weights_keys", None)))
        rec["all_tied_weights_keys"] = jsonable(safe(lambda: getattr(qm, "all_tied_weights_keys", None)))
        rec["output_embeddings"] = safe(lambda: module_name_of(qm, qm.get_output_embeddings()))
        hq = getattr(qm, "hf_quantizer", None)
        rec["modules_to_not_convert"] = jsonable(getattr(hq, "modules_to_not_convert", None)) if hq else None
        out = os.path.join(tmp, "out")
        stage = "save-4bit"
        qm.save_pretrained(out)
        del qm
        stage = "record"
        rec["src_tensors"] = checkpoint_headers(src)
        rec["out_tensors"] = checkpoint_headers(out)
        qs = {}
        for k, v in rec["out_tensors"].items():
            if ".quant_state.bitsandbytes__" in k:
                w = k.split(".quant_state.")[0]
                qs[w] = json.loads(read_tensor_bytes(os.path.join(out, v["file"]), k))
        rec["quant_states"] = qs
        with open(os.path.join(src, "config.json")) as f:
            rec["config_src"] = json.load(f)
        with open(os.path.join(out, "config.json")) as f:
            rec["config_out"] = json.load(f)
        rec["src_files"] = sorted(os.listdir(src))
        rec["out_files"] = sorted(os.listdir(out))
        rec["status"] = "ok"
        if keep:
            dst = os.path.join(outdir, "refs", f"{model_type}--{class_name}")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, os.path.join(dst, "src"))
            shutil.copytree(out, os.path.join(dst, "out"))
    except Timeout:
        rec["error"] = f"timeout at stage {stage}"
    except Exception as e:  # noqa: BLE001
        rec["error"] = f"{stage}: {type(e).__name__}: {e}"[:2000]
        rec["traceback"] = traceback.format_exc()[-3000:]
    finally:
        tlog.removeHandler(handler)
        rec["log"] = log.getvalue()[-4000:]
        shutil.rmtree(tmp, ignore_errors=True)
        import gc
        gc.collect()
        try:
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
    return rec


def all_jobs():
    from transformers.models.auto import modeling_auto
    jobs, seen = [], set()
    ref = set(REFERENCE)
    keep_all = os.environ.get("ARCHGEN_KEEP_ALL") == "1"
    for kind, var in AUTO:
        mapping = getattr(modeling_auto, var, {})
        for mt, names in mapping.items():
            for cn in (names if isinstance(names, (list, tuple)) else [names]):
                if (kind, mt, cn) in seen:
                    continue
                seen.add((kind, mt, cn))
                jobs.append((kind, mt, cn, keep_all or (mt, kind) in ref))
    # Reference families first, then the rest.
    jobs.sort(key=lambda j: (not j[3], AUTO.index(next(a for a in AUTO if a[0] == j[0]))))
    return jobs


def worker(args):
    import torch
    torch.set_num_threads(2)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    jobs = all_jobs()
    mine = jobs[args.index::args.workers]
    deadline = args.start + args.deadline
    path = os.path.join(args.out, f"records-{args.index}.jsonl")
    signal.signal(signal.SIGALRM, _alarm)
    with open(path, "w") as f:
        for kind, mt, cn, keep in mine:
            if time.time() > deadline:
                rec = {"kind": kind, "model_type": mt, "class": cn, "status": "skipped", "error": "deadline"}
            else:
                t0 = time.time()
                signal.alarm(60)
                try:
                    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                        rec = run_one(kind, mt, cn, args.out, keep)
                except Timeout:
                    rec = {"kind": kind, "model_type": mt, "class": cn, "status": "error", "error": "timeout"}
                finally:
                    signal.alarm(0)
                rec["seconds"] = round(time.time() - t0, 2)
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()


def dump_sources(out):
    import transformers
    root = os.path.dirname(transformers.__file__)
    with tarfile.open(os.path.join(out, "transformers-src.tar.gz"), "w:gz") as t:
        for dirpath, _, files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            if rel.startswith("models") and rel != "models" and not rel.startswith("models/auto"):
                continue
            for fn in files:
                if fn.endswith(".py"):
                    t.add(os.path.join(dirpath, fn), arcname=os.path.join("transformers", rel, fn))
        for mt in ("llama", "mixtral", "falcon", "gpt2", "t5", "gemma3", "llava", "qwen2_vl", "gpt_oss",
                   "deepseek_v3", "llama4", "qwen2_moe"):
            d = os.path.join(root, "models", mt)
            if os.path.isdir(d):
                for fn in os.listdir(d):
                    if fn.startswith("modeling_") or fn.startswith("configuration_"):
                        t.add(os.path.join(d, fn), arcname=os.path.join("transformers", "models", mt, fn))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--deadline", type=float, default=300)
    ap.add_argument("--index", type=int, default=-1)
    ap.add_argument("--start", type=float, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.index >= 0:
        worker(args)
        return
    start = time.time()
    import torch
    import transformers
    import bitsandbytes
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "bitsandbytes": bitsandbytes.__version__, "python": sys.version.split()[0],
            "gpu": torch.cuda.get_device_name(0)}
    table = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "formats", "arch", "table.json")
    if os.path.exists(table):
        with open(table) as f:
            src = json.load(f).get("source", {})
        if (src.get("transformers"), src.get("bitsandbytes")) != (meta["transformers"], meta["bitsandbytes"]):
            print(f"NOTE: formats/arch/table.json comes from transformers {src.get('transformers')} / bitsandbytes "
                  f"{src.get('bitsandbytes')}; this machine has {meta['transformers']} / {meta['bitsandbytes']}: "
                  "the table is stale, rebuild it from these records (build_table.py)")
    dump_sources(args.out)
    procs = [subprocess.Popen([sys.executable, __file__, args.out, "--workers", str(args.workers),
                               "--deadline", str(args.deadline), "--index", str(i), "--start", str(start)])
             for i in range(args.workers)]
    for p in procs:
        p.wait()
    n = 0
    with open(os.path.join(args.out, "arch-records.jsonl"), "w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for i in range(args.workers):
            p = os.path.join(args.out, f"records-{i}.jsonl")
            if os.path.exists(p):
                with open(p) as g:
                    for line in g:
                        f.write(line)
                        n += 1
                os.remove(p)
    print(f"{n} records in {time.time() - start:.0f} s", meta)


if __name__ == "__main__":
    main()
