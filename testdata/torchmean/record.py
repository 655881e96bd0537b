"""Record torch's CUDA float32 mean (and sum) of many 1-D vectors.

Run on a GPU machine with PyTorch:  python3 record.py OUTDIR
Writes OUTDIR/cases.tsv, OUTDIR/raw_<name>.f32 (+ raw.tsv) and OUTDIR/device.json.

Inputs of cases.tsv are made from an integer hash that formats/bnb/cudamean_test.go
re-implements (gen 0..3); the raw_*.f32 files hold torch-RNG absmax vectors verbatim.
"""
import json, os, random, sys, time
import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
dev = torch.device("cuda")
M = 0xFFFFFFFF


def lowbias32(x):
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M
    x = x ^ (x >> 16)
    return x


def to_f32(bits):
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)
    return bits.to(torch.int32).view(torch.float32)


def gen(g, seed, n):
    i = torch.arange(n, device=dev, dtype=torch.int64)
    s = (seed * 0x9E3779B9) & M
    h = lowbias32(i ^ s)
    h2 = lowbias32(h ^ 0x5BD1E995)
    if g == 0:  # positive, exponents 2^-7 .. 2^0
        return to_f32(((120 + (h % 8)) << 23) | (h2 & 0x7FFFFF))
    if g == 1:  # absmax-like: 0.02*(1.8+1.4u), u in [0,1)
        u = (h >> 8).to(torch.float64) * 2.0**-24
        return (0.02 * (1.8 + 1.4 * u)).to(torch.float32)
    if g == 2:  # positive, exponents 2^-37 .. 2^23
        return to_f32(((90 + (h % 61)) << 23) | (h2 & 0x7FFFFF))
    if g == 3:  # signed, exponents 2^-7 .. 2^0
        return to_f32(((h2 >> 31) << 31) | ((120 + (h % 8)) << 23) | (h2 & 0x7FFFFF))
    raise ValueError(g)


def bits(t):
    return t.reshape(1).view(torch.int32).item() & M


p = torch.cuda.get_device_properties(0)
info = {}
for k in dir(p):
    if k.startswith("_"):
        continue
    try:
        v = getattr(p, k)
    except Exception:
        continue
    if isinstance(v, (int, str, float, bool)):
        info[k] = v
info["torch"] = torch.__version__
info["cuda"] = torch.version.cuda
json.dump(info, open(os.path.join(out, "device.json"), "w"), indent=1, default=str)
print(info, flush=True)

ns = set(range(1, 301))
for k in range(8, 24):
    for d in range(-5, 6):
        ns.add(2**k + d)
for m in (255, 256, 257):  # global-reduce threshold: ceil(n/512) >= 256
    for d in (-1, 0, 1):
        ns.add(m * 512 + d)
for c in (16, 17, 33, 64, 86, 100, 255, 256, 257, 511, 512, 513, 527, 528, 529, 600):  # ctas boundaries
    for d in (0, 1):
        ns.add(c * 8192 + d)
for r, cdim in [(4096, 4096), (4096, 11008), (11008, 4096), (4096, 14336), (1024, 4096), (5120, 13824),
                (8192, 28672), (2048, 8192), (3072, 8192), (896, 4864), (4096, 128256), (2560, 10240)]:
    for bs in (32, 64, 128, 256):
        ns.add(r * cdim // bs)
rng = random.Random(20261127)
for _ in range(400):
    ns.add(int(round(10 ** rng.uniform(0, 6.35))))
for _ in range(60):
    ns.add(rng.randrange(2, 3000))
ns = sorted(x for x in ns if x >= 1)

t0 = time.time()
lines = []
seed = 0
for n in ns:
    gens = (0, 1) if n <= 300 else (0, 1, 2, 3)
    for g in gens:
        seed += 1
        x = gen(g, seed, n)
        m1 = bits(x.mean())
        m2 = bits(x.mean())
        sm = bits(x.sum())
        lines.append(f"{g}\t{seed}\t{n}\t{m1:08x}\t{sm:08x}\t{'' if m1 == m2 else 'NONDET'}")
print("cases", len(lines), "in", time.time() - t0, flush=True)
with open(os.path.join(out, "cases.tsv"), "w") as f:
    f.write("# gen\tseed\tn\tmean_bits\tsum_bits\tflag\n")
    f.write("\n".join(lines) + "\n")

# torch-RNG absmax vectors, kept verbatim
raw = []
for name, rows, cols, bs, dt in [("a1000", 1000, 64, 64, torch.float32), ("llama_o_bs64_b", 1024, 704, 64, torch.bfloat16),
                                 ("r65536", 4096, 1024, 64, torch.float32), ("r262144", 4096, 4096, 64, torch.float32)]:
    torch.manual_seed(len(raw) + 7)
    w = (torch.randn(rows, cols, device=dev) * 0.02).to(dt).float()
    a = w.reshape(-1, bs).abs().amax(1).contiguous()
    a.cpu().numpy().tofile(os.path.join(out, f"raw_{name}.f32"))
    raw.append(f"{name}\t{a.numel()}\t{bits(a.mean()):08x}\t{bits(a.sum()):08x}")
with open(os.path.join(out, "raw.tsv"), "w") as f:
    f.write("# name\tn\tmean_bits\tsum_bits\n" + "\n".join(raw) + "\n")
print("done", time.time() - t0, flush=True)
