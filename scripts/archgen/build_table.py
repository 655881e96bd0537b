"""Turn gen_arch.py's records into formats/arch's table (plain Python 3, no torch).

    python3 scripts/archgen/build_table.py formats/arch/table.json RECORDS.jsonl[.gz]...

Several record sets (tiny models of different depth and width) are merged:
a normalized name that two models decide differently becomes "exact"
entries, so nothing is generalized that the observations disagree on.

The table holds, per architecture class (config.json "architectures"[0]):

  model_type      config.json's model_type for that class
  kind            the Auto mapping it came from (causal_lm, seq2seq_lm, ...)
  tensors         normalized checkpoint tensor name -> decision, where a name
                  is normalized by replacing every all-digit component with
                  "*" and a trailing "_<digits>" of a component with "_*"
                  (layer and expert indices: "experts.3", "expert_3"), and a
                  decision is
                  "q" (quantized), "t" (quantized after transposing: GPT-2
                  style Conv1D) or "k:REASON" / "k:REASON:F32" (kept dense;
                  F32 when transformers stores it as float32 whatever the
                  model dtype)
  exact           the same for single tensor names, where one normalized
                  name had two decisions (index-dependent layers)
  output_embedding  the module transformers treats as the output embedding
  subconfig_dtype dotted paths of the sub-configs of config.json into which
                  transformers writes "dtype" (sorted)
  config_model_type  the model_type transformers writes, where it is not
                  the one it read (a model_type that reuses another's class)
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
SUFFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_]*?)_\d+$")
QUANT_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
FLOAT = {"F32", "F16", "BF16", "F64"}
KIND_ORDER = ["causal_lm", "image_text_to_text", "seq2seq_lm", "speech_seq2seq", "masked_lm",
              "sequence_classification"]


def normalize_component(c):
    if DIGITS.match(c):
        return "*"
    m = SUFFIX.match(c)
    if m:
        return m.group(1) + "_*"
    return c


def normalize(name):
    return ".".join(normalize_component(c) for c in name.split("."))


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


def decisions(rec):
    """Per checkpoint key of one record: its decision string."""
    src, out, qs = rec["src_tensors"], rec["out_tensors"], rec["quant_states"]
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
    return per_key


def dtype_paths(cs, co, prefix=""):
    """Dotted paths of sub-configs whose "dtype" transformers sets."""
    out = []
    for k, v in co.items():
        if not isinstance(v, dict) or k == "quantization_config":
            continue
        sv = cs.get(k) if isinstance(cs.get(k), dict) else {}
        path = prefix + k
        if "dtype" in v and sv.get("dtype") != v["dtype"]:
            out.append(path)
        out += dtype_paths(sv, v, path + ".")
    return out


def entry(recs):
    """The table entry of one architecture class from its records (first = primary)."""
    tensors, exact, conflicts = {}, {}, set()
    per_key_all = []
    for rec in recs:
        per_key = decisions(rec)
        per_key_all.append(per_key)
        for k, d in per_key.items():
            n = normalize(k)
            if n in tensors and tensors[n] != d:
                conflicts.add(n)
            tensors.setdefault(n, d)
    for n in conflicts:
        del tensors[n]
    for per_key in per_key_all:
        for k, d in per_key.items():
            if normalize(k) in conflicts:
                if k in exact and exact[k] != d:
                    exact[k] = None
                else:
                    exact.setdefault(k, d)
    exact = {k: d for k, d in exact.items() if d is not None}
    rec = recs[0]
    e = {"model_type": rec["model_type"], "kind": rec["kind"], "tensors": dict(sorted(tensors.items()))}
    if exact:
        e["exact"] = dict(sorted(exact.items()))
    oe = rec.get("output_embeddings")
    if isinstance(oe, str) and oe:
        e["output_embedding"] = oe
    sub = sorted(set(p for r in recs for p in dtype_paths(r.get("config_src") or {}, r.get("config_out") or {})))
    if sub:
        e["subconfig_dtype"] = sub
    mto = (rec.get("config_out") or {}).get("model_type")
    if mto and mto != rec["model_type"]:
        e["config_model_type"] = mto
    for r in recs:
        src, out, qs = r["src_tensors"], r["out_tensors"], r["quant_states"]
        renamed = sorted(k for k in src if k not in out)
        if not qs:
            e["refuse"] = "transformers quantizes no layer of this architecture (no module is exactly torch.nn.Linear or Conv1D outside modules_to_not_convert)"
        elif renamed:
            added = sorted(k for k in out if k not in src and not is_quant_companion(k))
            e["refuse"] = f"transformers renames tensors when it loads this architecture ({renamed[0]} -> {added[0] if added else '?'})"
    return e


def main():
    dst, srcs = sys.argv[1], sys.argv[2:]
    meta, recs = None, []
    for src in srcs:
        opener = gzip.open if src.endswith(".gz") else open
        with opener(src, "rt") as f:
            lines = [json.loads(line) for line in f]
        m = lines[0]["meta"]
        if meta is not None and (m["transformers"], m["bitsandbytes"]) != (meta["transformers"], meta["bitsandbytes"]):
            sys.exit(f"{src}: records of transformers {m['transformers']} / bitsandbytes {m['bitsandbytes']}, "
                     f"others of {meta['transformers']} / {meta['bitsandbytes']}: regenerate them together")
        meta = meta or m
        recs += lines[1:]
    recs.sort(key=lambda r: (KIND_ORDER.index(r["kind"]) if r["kind"] in KIND_ORDER else 99))
    groups, unbuilt = {}, {}
    for r in recs:
        c = r["class"]
        if r["status"] != "ok":
            if c not in unbuilt:
                unbuilt[c] = {"model_type": r["model_type"], "error": (r.get("error") or "")[:200]}
            continue
        groups.setdefault(c, {}).setdefault(r["model_type"], []).append(r)
    archs = {}
    for c, by_mt in groups.items():
        unbuilt.pop(c, None)
        mts = list(by_mt)
        primary = entry(by_mt[mts[0]])
        archs[c] = primary
        for mt in mts[1:]:
            e = entry(by_mt[mt])
            if e["tensors"] != primary["tensors"] or e.get("exact") != primary.get("exact") or \
                    e.get("refuse") != primary.get("refuse") or e.get("subconfig_dtype") != primary.get("subconfig_dtype") \
                    or e.get("config_model_type") != primary.get("config_model_type"):
                archs[f"{c}@{mt}"] = e
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
    print(f"{len(archs)} entries ({nref} refused), {len(unbuilt)} unbuilt -> {dst}")


if __name__ == "__main__":
    main()
