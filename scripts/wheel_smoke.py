"""Checks an installed fastlm wheel: it imports from site-packages (not a source
tree), holds every CPU ISA and the CUDA kernels it should, computes correctly on
each ISA this CPU runs, trains a few steps, and `fastlm info` says so.

    python scripts/wheel_smoke.py [--cuda | --cpu-only]

Run it from outside the repository with the wheel's environment active; exits
non-zero with the reason on the first failed check.
"""
import argparse
import os
import shutil
import subprocess
import sys
import sysconfig

COMPILED_ISAS = ("generic", "avx2", "avx512")


def fail(msg: str) -> None:
    sys.exit(f"wheel_smoke: FAIL: {msg}")


def check_isa(isa: str) -> None:
    """A matmul and a trained-step loss under FASTLM_CPU_ISA=isa, in a fresh process
    (the kernel table is chosen at import)."""
    code = (
        "import numpy as np, fastlm\n"
        "from fastlm import ops\n"
        f"assert fastlm.cpu_isa() == {isa!r}, fastlm.cpu_isa()\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((17, 33)).astype(np.float32)\n"
        "b = rng.standard_normal((33, 127)).astype(np.float32)\n"
        "ref = a.astype(np.float64) @ b.astype(np.float64)\n"
        "err = np.abs(ops.matmul(a, b) - ref).max()\n"
        "assert err < 1e-4, err\n"
    )
    env = dict(os.environ, FASTLM_CPU_ISA=isa)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"ISA {isa}: {r.stderr.strip()[-400:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cuda", dest="cuda", action="store_true", default=True,
                   help="the wheel must hold the CUDA kernels (default)")
    g.add_argument("--cpu-only", dest="cuda", action="store_false",
                   help="the wheel must not hold them")
    args = p.parse_args()

    import importlib.util

    import numpy as np

    # Where fastlm would come from, before importing it: a source tree without
    # a build cannot even be imported, and that must read as this refusal.
    spec = importlib.util.find_spec("fastlm")
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    where = os.path.realpath(spec.origin) if spec is not None and spec.origin else "nowhere"
    if not where.startswith(site + os.sep):
        fail(f"fastlm imported from {where}, not from this environment's site-packages {site}")

    import fastlm

    info = fastlm.build_info()
    print(f"wheel_smoke: fastlm {fastlm.__version__} from {os.path.dirname(where)}")
    print(f"wheel_smoke: build_info {info}")
    missing = [i for i in COMPILED_ISAS if i not in info.get("cpu_isas", [])]
    if missing:
        fail(f"build_info()['cpu_isas'] lacks {missing}: {info.get('cpu_isas')}")
    if bool(info.get("cuda")) != args.cuda:
        fail(f"build_info()['cuda'] is {info.get('cuda')}, expected {args.cuda}")
    if args.cuda and not info.get("cuda_archs"):
        fail("CUDA is compiled in but build_info()['cuda_archs'] is empty")

    for isa in fastlm.available_cpu_isas():
        check_isa(isa)
    print(f"wheel_smoke: ops.matmul correct on {', '.join(fastlm.available_cpu_isas())}")

    from fastlm import CharTokenizer, Transformer

    text = "the quick brown fox jumps over the lazy dog. " * 40
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    model = Transformer(tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32, tokenizer=tok)
    hist = model.fit(ids, steps=30, batch_size=8, lr=3e-3, seed=0, progress=False)
    first, last = hist[0]["loss"], hist[-1]["loss"]
    if not (np.isfinite(last) and last < first):
        fail(f"training did not lower the loss: {first:.3f} -> {last:.3f}")
    print(f"wheel_smoke: 30 training steps, loss {first:.3f} -> {last:.3f}")

    exe = shutil.which("fastlm")
    if exe is None:
        fail("the `fastlm` command is not on PATH")
    out = subprocess.run([exe, "info"], capture_output=True, text=True, check=True).stdout
    print(out, end="")
    if "compiled: " + ", ".join(COMPILED_ISAS) not in out:
        fail("`fastlm info` does not list the compiled ISAs")
    expect = "cuda: compiled in" if args.cuda else "cuda: not compiled in"
    if expect not in out:
        fail(f"`fastlm info` does not say '{expect}'")
    print("wheel_smoke: OK")


if __name__ == "__main__":
    main()
