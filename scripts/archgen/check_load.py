"""Check qconv's conversions against transformers + bitsandbytes on the GPU machine.

    python3 scripts/archgen/check_load.py QCONV REFS OUT.json

REFS holds <model_type>--<Class>/{src,out} directories as gen_arch.py keeps
them (out/ = transformers' own 4-bit save). For each, it runs
`QCONV convert src DIR`, compares every file of DIR with out/ byte for byte,
and, for the families transformers can run from input_ids alone, loads both
4-bit directories with from_pretrained(device_map="cuda:0") and compares
the logits of one fixed batch (torch.equal: identical, not close). A family
that transformers quantizes nothing of must be refused by qconv (exit 2).
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers


def files_equal(a, b):
    fa, fb = sorted(os.listdir(a)), sorted(os.listdir(b))
    if fa != fb:
        return f"files {fa} != {fb}"
    for f in fa:
        with open(os.path.join(a, f), "rb") as x, open(os.path.join(b, f), "rb") as y:
            if x.read() != y.read():
                return f"{f} differs"
    return None


def logits(cls, d, ids):
    m = cls.from_pretrained(d, device_map="cuda:0")
    m.eval()
    with torch.no_grad():
        kw = {"input_ids": ids}
        if m.config.is_encoder_decoder:
            kw["decoder_input_ids"] = ids[:, :4]
        out = m(**kw)
    return out.logits.float().cpu()


def main():
    qconv, refs, report = sys.argv[1], sys.argv[2], sys.argv[3]
    workers = int(os.environ.get("CHECK_WORKERS", "8"))
    index = int(os.environ.get("CHECK_INDEX", "-1"))
    if index < 0 and workers > 1:
        scratch = tempfile.mkdtemp(prefix="check-load-")
        part = os.path.join(scratch, "report")
        procs = [subprocess.Popen([sys.executable, __file__, qconv, refs, f"{part}.{i}"],
                                  env=dict(os.environ, CHECK_INDEX=str(i)), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for i in range(workers)]
        res = {}
        for i, pr in enumerate(procs):
            pr.wait()
            # Each worker appends a line per family as it goes, so a worker
            # that crashes loses only the family it was on.
            try:
                with open(f"{part}.{i}.partial") as f:
                    for line in f:
                        res.update(json.loads(line))
            except OSError:
                pass
            if pr.returncode != 0:
                res[f"(worker {i})"] = {"exit": pr.returncode, "logits": "FAIL: worker crashed"}
        summarize(res, report)
        return
    res = {}
    tmp = tempfile.mkdtemp()
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 12), device="cuda:0")
    names = sorted(os.listdir(refs))
    if index >= 0:
        names = names[index::workers]
    for name in names:
        src, want = os.path.join(refs, name, "src"), os.path.join(refs, name, "out")
        cls_name = name.split("--", 1)[1]
        dst = os.path.join(tmp, name)
        p = subprocess.run([qconv, "convert", src, dst, "--progress", "never"], capture_output=True, text=True)
        r = {"exit": p.returncode}
        if p.returncode != 0:
            r["stderr"] = p.stderr[-600:]
            res[name] = r
            continue
        r["bytes"] = files_equal(dst, want) or "identical"
        cls = getattr(transformers, cls_name)
        try:
            b = logits(cls, want, ids)
        except Exception as e:  # noqa: BLE001
            r["logits"] = f"not runnable from input_ids alone (transformers' own 4-bit model fails too: {type(e).__name__}: {str(e)[:160]})"
            b = None
        if b is not None:
            try:
                a = logits(cls, dst, ids)
                r["logits"] = "identical" if torch.equal(a, b) else f"DIFFER: max diff {float((a - b).abs().max())}"
                r["finite"] = bool(torch.isfinite(a).all())
            except Exception as e:  # noqa: BLE001
                r["logits"] = f"FAIL: qconv's output does not run: {type(e).__name__}: {str(e)[:200]}"
        res[name] = r
        with open(report + ".partial", "a") as f:
            f.write(json.dumps({name: r}) + "\n")
    summarize(res, report)


def summarize(res, report):
    with open(report, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    n = len(res)
    ident = sum(1 for r in res.values() if r.get("bytes") == "identical")
    lg = sum(1 for r in res.values() if r.get("logits") == "identical")
    bad = sorted(k for k, r in res.items() if str(r.get("logits", "")).startswith(("FAIL", "DIFFER")))
    if bad:
        print("FAILED:", ", ".join(bad))
    print(f"{n} families: {ident} byte-identical, {lg} with identical logits, "
          f"{sum(1 for r in res.values() if r['exit'] == 2)} refused")


if __name__ == "__main__":
    main()
