"""Turn gen_arch.py's records into formats/arch's table (plain Python 3, no torch).

    python3 scripts/archgen/build_table.py RECORDS.jsonl[.gz] formats/arch/table.json

The table holds, per architecture class (config.json "architectures"[0]):

  model_type      config.json's model_type for that class
  kind            the Auto mapping it came from (causal_lm, seq2seq_lm, ...)
  tensors         normalized checkpoint tensor name -> decision, where a name
                  is normalized by replacing every all-digit component with
                  "*" (layer and expert indices), and a decision is
                  "q" (quantized), "t" (quantized after transposing: GPT-2
                  style Conv1D) or "k:REASON" / "k:REASON:F32" (kept dense;
                  F32 when transformers stores it as float32 whatever the
                  model dtype)
  exact           the same for single tensor names, where one normalized
                  name had two decisions (index-dependent layers)
  output_embedding  the module transformers treats as the output embedding
  subconfig_dtype sub-configs of config.json into which transformers writes
                  "dtype" (sorted)
  refuse          why qconv must not convert it (transformers quantizes no
                  layer, or renames tensors when it loads them), if so

plus "unbuilt": architecture classes the generator could not build, with the
error (qconv treats them as unknown), and "source": the versions that made it.
"""
import gzip
import json
import re
import sys

DIGITS = re.compile(r"^\d+$")
QUANT_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
FLOAT = {"F32", "F16", "BF16", "F64"}
KIND_ORDER = ["causal_lm", "image_text_to_text", "seq2seq_lm", "speech_seq2seq", "masked_lm",
              "sequence_classification"]


def normalize(name):
    return ".".join("*" if DIGITS.match(c) else c for c in name.split("."))


def is_quant_companion(k):
    return ".quant_state." in k or k.endswith(QUANT_SUFFIXES)


def matches_module_rule(module, patterns):
    """transformers 5.17 quantizers_utils.should_convert_module, negated."""
    for key in patterns or []:
        try:
            if re.match(key + r"\.", module) or re.match(key, module) or module.endswith(key):
                return True
        except re.error:
            if module.endswith(key) or module.startswith(key):
                return True
    return False


def model_param(rec, key):
    """The loaded model's parameter name for checkpoint key, or (None, converter?)."""
    dm = rec.get("dense_model") or {}
    if key in dm:
        return key, False
    conv = rec.get("conversion") or {}
    cands = []
    for pat, repl in (conv.get("class_mapping") or {}).items():
        try:
            cands.append(re.sub(pat, repl, key))
        except re.error:
            pass
    for item in (conv.get("model") or []) + (conv.get("model_type") or []):
        srcs, tgts = item.get("source_patterns") or [], item.get("target_patterns") or []
        if item.get("type") == "WeightConverter":
            for s in srcs:
                rx = re.escape(s).replace(r"\*", r"\d+")
                if re.search(rx, key):
                    return None, True
            continue
        for s in srcs:
            for t in tgts:
                try:
                    cands.append(re.sub(s, t, key))
                except re.error:
                    cands.append(key.replace(s, t))
    for c in list(cands):
        if c in dm:
            return c, False
        for pat, repl in (conv.get("class_mapping") or {}).items():
            try:
                c2 = re.sub(pat, repl, c)
            except re.error:
                continue
            if c2 in dm:
                return c2, False
    return None, False


def reason(rec, key, src):
    if src["dtype"] not in FLOAT:
        return "not_float"
    leaf = key.rsplit(".", 1)[-1]
    p, fused = model_param(rec, key)
    if p is None:
        if fused:
            return "expert" if "expert" in key else "fused_on_load"
        return "unknown_module"
    info = rec["dense_model"][p]
    cls = info["module_class"]
    module = info["module"]
    lower = cls.lower()
    if leaf != "weight":
        return "bias" if leaf == "bias" else "not_a_linear_weight"
    if info["is_embedding"]:
        return "embedding"
    if (cls == "Linear" and info["is_linear"]) or info["is_conv1d"]:
        oe = rec.get("output_embeddings") or rec.get("dense_output_embeddings")
        if isinstance(oe, str) and oe and (module == oe or module.endswith("." + oe) or oe.endswith(module)):
            return "output_embedding"
        if matches_module_rule(module, rec.get("keep_in_fp32_modules")):
            return "keep_in_fp32"
        tied = rec.get("all_tied_weights_keys")
        if isinstance(tied, dict) and any(module == k.removesuffix(".weight") or module == v.removesuffix(".weight")
                                          for k, v in tied.items() if isinstance(v, str)):
            return "tied_embedding"
        return "not_converted"
    if info["is_linear"]:
        return "linear_subclass"
    if "norm" in lower:
        return "norm"
    if "expert" in module or "expert" in lower:
        return "expert"
    last = module.rsplit(".", 1)[-1]
    if "router" in lower or "gate" in lower or last in ("gate", "router"):
        return "router"
    if len(src["shape"]) != 2:
        return "not_2d"
    return "not_linear"


def entry(rec):
    src, out, qs = rec["src_tensors"], rec["out_tensors"], rec["quant_states"]
    tensors, exact, conflicts = {}, {}, set()
    per_key = {}
    for k, v in src.items():
        if k in qs:
            p, _ = model_param(rec, k)
            info = (rec.get("dense_model") or {}).get(p or "", {})
            logical = qs[k].get("shape")
            d = "t" if info.get("is_conv1d") or (logical and list(logical) != list(v["shape"])) else "q"
        else:
            r = reason(rec, k, v)
            o = out.get(k)
            d = "k:" + r
            if o is not None and o["dtype"] == "F32" and v["dtype"] != "F32":
                d += ":F32"
        per_key[k] = d
        n = normalize(k)
        if n in tensors and tensors[n] != d:
            conflicts.add(n)
        tensors.setdefault(n, d)
    for n in conflicts:
        del tensors[n]
    for k, d in per_key.items():
        if normalize(k) in conflicts:
            exact[k] = d
    e = {"model_type": rec["model_type"], "kind": rec["kind"], "tensors": dict(sorted(tensors.items()))}
    if exact:
        e["exact"] = dict(sorted(exact.items()))
    oe = rec.get("output_embeddings")
    if isinstance(oe, str) and oe:
        e["output_embedding"] = oe
    cs, co = rec.get("config_src") or {}, rec.get("config_out") or {}
    sub = sorted(k for k, v in co.items() if isinstance(v, dict) and k != "quantization_config"
                 and "dtype" in v and not (isinstance(cs.get(k), dict) and "dtype" in cs[k]))
    if sub:
        e["subconfig_dtype"] = sub
    renamed = sorted(k for k in src if k not in out)
    if not qs:
        e["refuse"] = "transformers quantizes no layer of this architecture (no module is exactly torch.nn.Linear or Conv1D outside modules_to_not_convert)"
    elif renamed:
        added = sorted(k for k in out if k not in src and not is_quant_companion(k))
        e["refuse"] = f"transformers renames tensors when it loads this architecture ({renamed[0]} -> {added[0] if added else '?'})"
    return e


def main():
    src, dst = sys.argv[1], sys.argv[2]
    opener = gzip.open if src.endswith(".gz") else open
    with opener(src, "rt") as f:
        lines = [json.loads(line) for line in f]
    meta = lines[0]["meta"]
    recs = lines[1:]
    recs.sort(key=lambda r: (KIND_ORDER.index(r["kind"]) if r["kind"] in KIND_ORDER else 99))
    archs, unbuilt = {}, {}
    for r in recs:
        c = r["class"]
        if c in archs:
            continue
        if r["status"] == "ok":
            archs[c] = entry(r)
            unbuilt.pop(c, None)
        elif c not in unbuilt:
            unbuilt[c] = {"model_type": r["model_type"], "error": (r.get("error") or "")[:200]}
    table = {
        "source": {"transformers": meta["transformers"], "bitsandbytes": meta["bitsandbytes"],
                   "torch": meta["torch"], "generator": "scripts/archgen/gen_arch.py + build_table.py",
                   "quantization_config": "load_in_4bit, nf4, double quant, compute dtype bfloat16, dtype bfloat16"},
        "architectures": dict(sorted(archs.items())),
        "unbuilt": dict(sorted(unbuilt.items())),
    }
    with open(dst, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    nref = sum(1 for a in archs.values() if "refuse" in a)
    print(f"{len(archs)} architectures ({nref} refused), {len(unbuilt)} unbuilt -> {dst}")


if __name__ == "__main__":
    main()
