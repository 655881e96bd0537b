#!/usr/bin/env python3
"""Reference data for `qconv merge`: tiny bases, random LoRA adapters, PEFT's merges.

Run on a machine with torch, transformers, peft and safetensors (and bitsandbytes with
CUDA for the 4-bit case), as

    python3 scripts/gen_peft_refs.py OUTDIR

It writes, under OUTDIR (copied into testdata/peft by hand):

  <fam>-base/            a tiny random model saved by transformers (bf16, safetensors)
  <fam>-adapter/         a PEFT LoRA adapter for it (save_pretrained), every lora_A/lora_B
                         (and embedding, bias, modules_to_save) tensor random and nonzero
  <fam>-merged/          PeftModel.from_pretrained(base, adapter).merge_and_unload(), saved
                         (CPU, as the issue measured)
  llama-base-nf4/        the llama base quantized by transformers + bitsandbytes (nf4, double
                         quant, compute dtype bf16, CUDA), saved
  llama-merged-nf4/      PeftModel.from_pretrained(that 4-bit base, llama-adapter) merged on
                         CUDA and saved (PEFT dequantizes, adds the delta and requantizes)
  report.json            versions, what each case used, the logits differences between PEFT's
                         merge and the correctly rounded merge computed here in float64, and the
                         source of the PEFT functions whose numerics qconv follows
                         (recorded, so that the Go side can cite them)

Families: llama (rank_pattern, alpha_pattern, embedding LoRA, modules_to_save lm_head),
qwen2 (tied embeddings, use_rslora, lora_bias, bias="all", all-linear), gpt2 (Conv1D,
fan_in_fan_out, embedding LoRA on wte). Seeds are fixed.
"""

import inspect
import json
import math
import os
import sys
import traceback

import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
report = {"errors": [], "cases": {}, "versions": {}, "sources": {}}


def note_versions():
    import peft
    import safetensors
    import transformers

    report["versions"] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "cuda": torch.cuda.is_available() and torch.cuda.get_device_name(0),
    }
    try:
        import bitsandbytes

        report["versions"]["bitsandbytes"] = bitsandbytes.__version__
    except Exception as e:  # noqa: BLE001
        report["versions"]["bitsandbytes"] = "unavailable: %r" % (e,)


def note_sources():
    import peft.tuners.lora.layer as L
    import peft.utils.other as O
    import peft.utils.save_and_load as S

    items = {
        "lora.Linear.merge": L.Linear.merge,
        "lora.Linear.get_delta_weight": L.Linear.get_delta_weight,
        "lora.Embedding.merge": L.Embedding.merge,
        "lora.Embedding.get_delta_weight": L.Embedding.get_delta_weight,
        "lora.LoraLayer.update_layer": L.LoraLayer.update_layer,
        "get_pattern_key": O.get_pattern_key,
        "get_peft_model_state_dict": S.get_peft_model_state_dict,
    }
    try:
        import peft.tuners.lora.bnb as B

        items["lora.bnb.Linear4bit.merge"] = B.Linear4bit.merge
    except Exception as e:  # noqa: BLE001
        report["errors"].append("bnb source: %r" % (e,))
    for k, f in items.items():
        try:
            report["sources"][k] = inspect.getsource(f)
        except Exception as e:  # noqa: BLE001
            report["sources"][k] = "unavailable: %r" % (e,)


def make_base(fam):
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed({"llama": 1, "qwen2": 2, "gpt2": 3}[fam])
    if fam == "llama":
        cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          tie_word_embeddings=False)
        m = LlamaForCausalLM(cfg)
    elif fam == "qwen2":
        cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          tie_word_embeddings=True)
        m = Qwen2ForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)
        m = GPT2LMHeadModel(cfg)
    # Biases are zero at init; make them nonzero so that bias handling shows.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.02)
    return m.to(torch.bfloat16)


def lora_config(fam):
    from peft import LoraConfig

    if fam == "llama":
        return LoraConfig(r=8, lora_alpha=12, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj", "embed_tokens"],
                          rank_pattern={"down_proj": 4, "layers.1.self_attn.q_proj": 2},
                          alpha_pattern={"v_proj": 20},
                          modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    if fam == "qwen2":
        return LoraConfig(r=4, lora_alpha=6, lora_dropout=0.0, target_modules="all-linear",
                          use_rslora=True, lora_bias=True, bias="all",
                          rank_pattern={"mlp.down_proj": 2}, task_type="CAUSAL_LM")
    return LoraConfig(r=8, lora_alpha=5, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc", "wte"],
                      fan_in_fan_out=True, task_type="CAUSAL_LM")


def randomize(pm, seed):
    """Every trainable tensor random: lora_* N(0, 0.05); the rest (modules_to_save copies,
    biases with bias="all") perturbed by N(0, 0.01)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if not p.requires_grad:
                continue
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "lora_" in n:
                p.copy_((r * 0.05).to(p.dtype))
            else:
                p.add_((r * 0.01).to(p.dtype))


def cr_merge(base_sd, adapter_sd, cfg):
    """The correctly rounded merge, computed in float64: out = bf16(W + f32(s * (B @ A))),
    with s = float32(alpha / r) (or / sqrt(r)), the scaling torch multiplies by."""
    import re

    def pat(patterns, key, default):
        for k, v in patterns.items():
            if re.match(rf"(.*\.)?({k})$", key):
                return v
        return default

    out = dict(base_sd)
    pre = "base_model.model."
    # Whole tensors saved in the adapter (modules_to_save, bias="all") replace the base's.
    for k, v in adapter_sd.items():
        if "lora_" in k or not k.startswith(pre):
            continue
        name = k[len(pre):].replace(".modules_to_save", "")
        if name in out:
            out[name] = v.to(out[name].dtype).contiguous()
    mods = set()
    for k in adapter_sd:
        for suf in (".lora_A.weight", ".lora_embedding_A"):
            if k.endswith(suf):
                mods.add((k[len(pre):-len(suf)], suf == ".lora_embedding_A"))
    for mod, emb in sorted(mods):
        r = pat(cfg.rank_pattern or {}, mod, cfg.r)
        alpha = pat(cfg.alpha_pattern or {}, mod, cfg.lora_alpha)
        s = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
        s32 = float(torch.tensor(s, dtype=torch.float32))
        if emb:
            A = adapter_sd[pre + mod + ".lora_embedding_A"].double()
            B = adapter_sd[pre + mod + ".lora_embedding_B"].double()
            d = (B @ A).T
        else:
            A = adapter_sd[pre + mod + ".lora_A.weight"].double()
            B = adapter_sd[pre + mod + ".lora_B.weight"].double()
            d = B @ A
            if cfg.fan_in_fan_out:
                d = d.T
        d32 = (d * s32).float()
        W = out[mod + ".weight"]
        out[mod + ".weight"] = (W.double() + d32.double()).to(W.dtype).contiguous()
        bk = pre + mod + ".lora_B.bias"
        if bk in adapter_sd:
            b = out[mod + ".bias"]
            db = (adapter_sd[bk].double() * s32).float()
            out[mod + ".bias"] = (b.double() + db.double()).to(b.dtype).contiguous()
    return out


def dense_case(fam):
    from peft import PeftModel, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    case = {}
    base_dir, ad_dir, mg_dir = (os.path.join(out, f"{fam}-{x}") for x in ("base", "adapter", "merged"))
    m = make_base(fam)
    m.save_pretrained(base_dir)
    cfg = lora_config(fam)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16), cfg)
    randomize(pm, {"llama": 11, "qwen2": 12, "gpt2": 13}[fam])
    pm.save_pretrained(ad_dir)
    adapter_sd = load_file(os.path.join(ad_dir, "adapter_model.safetensors"))
    case["adapter_tensors"] = {k: [str(v.dtype), list(v.shape)] for k, v in sorted(adapter_sd.items())}

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    peft_model = PeftModel.from_pretrained(base, ad_dir)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        unmerged = peft_model(ids).logits.float()
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(mg_dir)
    with torch.no_grad():
        lg_peft = merged(ids).logits.float()

    base_sd = load_file(os.path.join(base_dir, "model.safetensors"))
    cr = cr_merge(base_sd, adapter_sd, cfg)
    peft_sd = load_file(os.path.join(mg_dir, "model.safetensors"))
    eq = tot = 0
    per = {}
    for k, v in cr.items():
        if k not in peft_sd:
            per[k] = "missing in PEFT's output"
            continue
        pv = peft_sd[k].contiguous()
        if pv.dtype != v.dtype:
            per[k] = f"dtype {pv.dtype} vs {v.dtype}"
            pv = pv.to(v.dtype)
        e = int((pv.view(-1).view(torch.int16 if v.element_size() == 2 else torch.int32)
                 == v.view(-1).view(torch.int16 if v.element_size() == 2 else torch.int32)).sum())
        if e != v.numel():
            per[k] = f"{e}/{v.numel()} equal"
        eq += e
        tot += v.numel()
    case["elements_equal_cr_vs_peft"] = [eq, tot]
    case["differing_tensors"] = per
    m2 = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    m2.load_state_dict({k: v for k, v in cr.items()}, strict=False)
    with torch.no_grad():
        lg_cr = m2(ids).logits.float()
    case["max_abs_logits_peft_merged_vs_cr"] = float((lg_peft - lg_cr).abs().max())
    case["max_abs_logits_peft_merged_vs_unmerged"] = float((lg_peft - unmerged).abs().max())
    case["max_abs_logits"] = float(lg_peft.abs().max())
    case["peft_merged_tensors"] = {k: [str(v.dtype), list(v.shape)] for k, v in sorted(peft_sd.items())}
    report["cases"][fam] = case


def nf4_case():
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    case = {}
    base_dir = os.path.join(out, "llama-base")
    q_dir, mg_dir = os.path.join(out, "llama-base-nf4"), os.path.join(out, "llama-merged-nf4")
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                            bnb_4bit_compute_dtype=torch.bfloat16)
    qm = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=qc, dtype=torch.bfloat16,
                                              device_map="cuda:0")
    qm.save_pretrained(q_dir)
    qm2 = AutoModelForCausalLM.from_pretrained(q_dir, device_map="cuda:0")
    pm = PeftModel.from_pretrained(qm2, os.path.join(out, "llama-adapter"))
    merged = pm.merge_and_unload()
    merged.save_pretrained(mg_dir)
    case["quant_state_dtypes"] = {}
    from safetensors.torch import load_file

    sd = load_file(os.path.join(mg_dir, "model.safetensors"))
    for k, v in sd.items():
        if k.endswith("quant_state.bitsandbytes__nf4"):
            case["quant_state_dtypes"][k] = json.loads(bytes(v.tolist()).decode())["dtype"]
    case["tensors"] = {k: [str(v.dtype), list(v.shape)] for k, v in sorted(sd.items())}
    report["cases"]["llama-nf4"] = case


def attempt(name, f, *a):
    try:
        f(*a)
    except Exception:  # noqa: BLE001
        report["errors"].append(name + ": " + traceback.format_exc())


attempt("versions", note_versions)
attempt("sources", note_sources)
for fam in ("llama", "qwen2", "gpt2"):
    attempt(fam, dense_case, fam)
if torch.cuda.is_available():
    attempt("llama-nf4", nf4_case)
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)
print(json.dumps({k: v for k, v in report.items() if k != "sources"}, indent=1)[:6000])
