#!/usr/bin/env python3
"""Reference data for `qconv merge` into a bitsandbytes 4-bit base: PEFT's own merge, on CUDA.

transformers 5.17 cannot save_pretrained PEFT's merge of a 4-bit model (its
revert_weight_conversion raises NotImplementedError), so this script saves the merged model's
state_dict() itself: bitsandbytes' Linear4bit puts the packed weight and its quant state
(QuantState.as_dict(packed=True)) into the state dict exactly as save_pretrained would.

Run on the GPU machine (torch, transformers, peft, safetensors; bitsandbytes built from
../shared/bitsandbytes and on PYTHONPATH), from the repository root, as

    python3 scripts/gen_peft_nf4_refs.py OUTDIR [QCONV]

It reads testdata/peft/llama-base (bf16), testdata/peft/llama-base-nf4 (that base quantized by
transformers + bitsandbytes) and testdata/peft/llama-adapter, and writes under OUTDIR (copied into
testdata/peft by hand):

  llama-adapter-qv/        a second adapter, LoRA on q_proj and v_proj only (r 8, alpha 16),
                           random lora_A and lora_B, so that most 4-bit weights are untouched
  llama-merged-nf4/        PeftModel.from_pretrained(the 4-bit base on CUDA, llama-adapter)
                           .merge_and_unload().state_dict(), as model.safetensors + the base's
                           config.json
  llama-merged-nf4-qv/     the same with llama-adapter-qv
  report-nf4.json          versions, the quant-state dtypes PEFT recorded, per-tensor byte
                           agreement with qconv's merge (when QCONV, a qconv binary, is given) and
                           the logits of both merges in transformers on CUDA (max |difference|),
                           and of the unmerged PeftModel

Seeds are fixed.
"""

import json
import os
import shutil
import subprocess
import sys

import torch

out = sys.argv[1]
qconv = sys.argv[2] if len(sys.argv) > 2 else None
os.makedirs(out, exist_ok=True)
T = "testdata/peft"
report = {"versions": {}, "cases": {}}


def versions():
    import bitsandbytes
    import peft
    import safetensors
    import transformers

    report["versions"] = {
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "safetensors": safetensors.__version__, "bitsandbytes": bitsandbytes.__version__,
        "cuda": torch.cuda.get_device_name(0),
    }


def make_qv_adapter():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    d = os.path.join(out, "llama-adapter-qv")
    m = AutoModelForCausalLM.from_pretrained(os.path.join(T, "llama-base"), dtype=torch.bfloat16)
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad and "lora_" in n:
                p.copy_((torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.05).to(p.dtype))
    pm.save_pretrained(d)
    return d


def load_nf4():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.join(T, "llama-base-nf4"), device_map="cuda:0")


def case(name, adapter):
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    c = {"adapter": adapter}
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5)).to("cuda:0")
    pm = PeftModel.from_pretrained(load_nf4(), adapter)
    with torch.no_grad():
        unmerged = pm(ids).logits.float()
    merged = pm.merge_and_unload()
    with torch.no_grad():
        lg_peft = merged(ids).logits.float()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in merged.state_dict().items()}
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(T, "llama-base-nf4", "config.json"), d)
    c["quant_state_dtypes"] = {
        k: json.loads(bytes(v.tolist()).decode())["dtype"]
        for k, v in sorted(sd.items()) if ".quant_state." in k
    }
    c["logits_peft_vs_unmerged_max_abs"] = (lg_peft - unmerged).abs().max().item()
    c["logits_max_abs"] = lg_peft.abs().max().item()
    if qconv:
        q = os.path.join("/tmp", "qconv-" + name)
        shutil.rmtree(q, ignore_errors=True)
        r = subprocess.run([qconv, "merge", "--progress", "never", os.path.join(T, "llama-base-nf4"), adapter, q],
                           capture_output=True, text=True)
        c["qconv_merge"] = {"rc": r.returncode, "stdout": r.stdout[-2000:], "stderr": r.stderr[-2000:]}
        if r.returncode == 0:
            qsd = load_file(os.path.join(q, "model.safetensors"))
            agree = {}
            for k in sorted(set(sd) | set(qsd)):
                a, b = sd.get(k), qsd.get(k)
                if a is None or b is None or a.dtype != b.dtype or a.shape != b.shape:
                    agree[k] = "missing or different dtype/shape"
                    continue
                ab, bb = a.view(torch.uint8).flatten(), b.view(torch.uint8).flatten()
                agree[k] = [int((ab == bb).sum().item()), ab.numel()]
            c["byte_agreement"] = agree
            qm = AutoModelForCausalLM.from_pretrained(q, device_map="cuda:0")
            with torch.no_grad():
                lg_q = qm(ids).logits.float()
            c["logits_qconv_vs_peft_max_abs"] = (lg_q - lg_peft).abs().max().item()
            c["logits_qconv_vs_unmerged_max_abs"] = (lg_q - unmerged).abs().max().item()
            c["logits_qconv_equal_peft"] = bool(torch.equal(lg_q, lg_peft))
    report["cases"][name] = c


versions()
qv = make_qv_adapter()
case("llama-merged-nf4", os.path.join(T, "llama-adapter"))
case("llama-merged-nf4-qv", qv)
with open(os.path.join(out, "report-nf4.json"), "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)
print(json.dumps(report, indent=1, sort_keys=True)[:8000])
