"""lightning.integrations on a GPU: patch_minimax on a MiniMax-architecture model, and the FLA
drop-ins against FLA itself.

Sections (--only, comma-separated):
  prefill     a random MiniMaxForCausalLM (transformers; default 8 layers, hidden 2048, 16
              heads of 128, every layer linear attention, a small MoE), bf16, batch 1: one
              forward of n tokens with a cache (logits of the last token only), unpatched
              (transformers' loop over 256-token blocks) and patched (lightning.attn):
              ms, tokens/s, peak extra memory, and the patched model's difference from the
              unpatched one (last logits and linear caches, relative RMS)
  generate    model.generate, greedy, --gen-tokens new tokens after a --gen-prompt prompt,
              per batch size: end-to-end tokens/s, decode tokens/s (the prompt's prefill,
              timed on its own, taken off) and peak memory; how many generated tokens the
              patched and unpatched runs share (bf16: the unpatched layer rounds its state to
              bf16 every block and token, so long generations may part ways)
  fla         lightning.integrations.fla against fla-core: chunk_simple_gla (g_gamma =
              -build_slopes(H)) and chunk_lightning_attn (layer 1 of 8), scale default
              (D^-0.5), at bench_lightning's shapes (b 4, h 32, d = e 128, bf16, (B, T, H, D)):
              fwd and fwd+bwd ms, output difference from FLA
  fla_decode  fused_recurrent_simple_gla, one token per sequence, fp32 initial state,
              output_final_state=True (both return a new state), b 64: us per step

Speedups are t_reference / t_ours (> 1: patched / drop-in faster). Writes
benchmarks/results/integrations.json (also copied to $OUT). --smoke runs every section end
to end on the CPU at tiny sizes (timings meaningless) and writes to the temp folder.
"""

import argparse
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.put_checkout_first()

import torch  # noqa: E402

from bench_lightning import make_qkvdo, slopes_for  # noqa: E402

SECTIONS = ("prefill", "generate", "fla", "fla_decode")


# ---------------------------------------------------------------------------------- MiniMax

def build_model(args):
    """A random-weight MiniMaxForCausalLM, every layer linear attention, in bf16 on the device."""
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    config = MiniMaxConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, head_dim=args.head_dim, num_local_experts=args.experts,
        num_experts_per_tok=args.experts_per_tok, layer_types=["linear_attention"] * args.layers,
        max_position_embeddings=max(args.prefill_ns) + args.gen_prompt + args.gen_tokens,
        bos_token_id=None, eos_token_id=None, pad_token_id=0)
    with torch.device(args.device):  # initialise on the device (fast); .to() moves it if not
        model = MiniMaxForCausalLM(config)
    model = model.to(device=args.device, dtype=args.dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


def linear_caches(cache):
    return [c for c in cache.linear_cache if isinstance(c, torch.Tensor)]


def max_rel_err(got, want):
    return max(common.rel_err(g, w) for g, w in zip(got, want))


def timed(fn, args, budget):
    """(ms, peak extra MiB) of fn(), or raises when the budget is spent."""
    if budget.exhausted():
        raise RuntimeError("skipped: time budget")
    ms = common.bench_ms(fn, warmup=args.warmup, rep=args.rep, device=args.device)
    mib = common.peak_extra_mib(fn, device=args.device) if args.mem else None
    common.free_memory()
    return ms, mib


def section_prefill(model, args, budget):
    from lightning.integrations.transformers import patch_minimax, unpatch_minimax

    rows = []
    for n in args.prefill_ns:
        ids = torch.randint(1, args.vocab, (1, n), device=args.device,
                            generator=torch.Generator(device=args.device).manual_seed(n))

        @torch.no_grad()
        def prefill():
            return model(ids, use_cache=True, logits_to_keep=1)

        want = None
        for impl in ("unpatched", "patched"):
            row = {"section": "prefill", "impl": impl, "b": 1, "n": n, "ms": None, "tokens_per_s": None,
                   "mem_mib": None, "diff_logits": None, "diff_cache": None, "error": None}
            try:
                (patch_minimax if impl == "patched" else unpatch_minimax)(model)
                out = prefill()
                got = (out.logits.float(), linear_caches(out.cache))
                if want is None:
                    want = got
                else:
                    row["diff_logits"] = common.rel_err(got[0], want[0])
                    row["diff_cache"] = max_rel_err(got[1], want[1])
                del out, got
                row["ms"], row["mem_mib"] = timed(prefill, args, budget)
                row["tokens_per_s"] = n / (row["ms"] * 1e-3)
            except Exception as exc:  # noqa: BLE001
                row["error"] = common.short_err(exc)
                if args.verbose:
                    traceback.print_exc()
            rows.append(row)
            print(f"  [prefill] {impl:>9} n={n}: {common.fmt(row['ms'])} ms, "
                  f"{common.fmt(row['tokens_per_s'], 0)} tok/s, mem {common.fmt(row['mem_mib'], 0)} MiB, "
                  f"diff logits {common.fmt(row['diff_logits'])} cache {common.fmt(row['diff_cache'])}"
                  + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
        del ids, want
        common.free_memory()
    unpatch_minimax(model)
    return rows


def section_generate(model, args, budget):
    from lightning.integrations.transformers import patch_minimax, unpatch_minimax

    rows = []
    for b in args.gen_batches:
        ids = torch.randint(1, args.vocab, (b, args.gen_prompt), device=args.device,
                            generator=torch.Generator(device=args.device).manual_seed(b))
        mask = torch.ones_like(ids)

        @torch.no_grad()
        def prefill():
            return model(ids, attention_mask=mask, use_cache=True, logits_to_keep=1)

        def generate():
            return model.generate(ids, attention_mask=mask, max_new_tokens=args.gen_tokens,
                                  do_sample=False)

        want = None
        for impl in ("unpatched", "patched"):
            row = {"section": "generate", "impl": impl, "b": b, "prompt": args.gen_prompt,
                   "new_tokens": args.gen_tokens, "ms": None, "prefill_ms": None, "tokens_per_s": None,
                   "decode_tokens_per_s": None, "mem_mib": None, "same_tokens": None,
                   "first_difference": None, "error": None}
            try:
                (patch_minimax if impl == "patched" else unpatch_minimax)(model)
                tokens = generate()[:, args.gen_prompt:]
                if want is None:
                    want = tokens
                else:
                    same = (tokens == want).cumprod(dim=1).sum(dim=1)  # leading tokens in common
                    row["same_tokens"] = bool(torch.equal(tokens, want))
                    row["first_difference"] = same.tolist()
                row["ms"], row["mem_mib"] = timed(generate, args, budget)
                row["prefill_ms"], _ = timed(prefill, args, budget)
                row["tokens_per_s"] = b * args.gen_tokens / (row["ms"] * 1e-3)
                decode_ms = row["ms"] - row["prefill_ms"]
                row["decode_tokens_per_s"] = b * args.gen_tokens / (decode_ms * 1e-3) if decode_ms > 0 else None
            except Exception as exc:  # noqa: BLE001
                row["error"] = common.short_err(exc)
                if args.verbose:
                    traceback.print_exc()
            rows.append(row)
            print(f"  [generate] {impl:>9} b={b}: {common.fmt(row['ms'])} ms "
                  f"({common.fmt(row['prefill_ms'])} prefill), {common.fmt(row['tokens_per_s'], 0)} tok/s, "
                  f"decode {common.fmt(row['decode_tokens_per_s'], 0)} tok/s, mem {common.fmt(row['mem_mib'], 0)} MiB, "
                  f"same tokens {row['same_tokens']}"
                  + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
        del ids, mask, want
        common.free_memory()
    unpatch_minimax(model)
    return rows


# ---------------------------------------------------------------------------------- FLA

def load_fla():
    """(name -> (ours, FLA's)) for the drop-ins; FLA's side None when it does not import."""
    from lightning.integrations import fla as ours

    try:
        from fla.ops.lightning_attn import chunk_lightning_attn
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
        theirs, error = {"chunk_simple_gla": chunk_simple_gla, "chunk_lightning_attn": chunk_lightning_attn,
                         "fused_recurrent_simple_gla": fused_recurrent_simple_gla}, None
    except Exception as exc:  # noqa: BLE001
        theirs, error = {}, common.short_err(exc)
    fns = {name: (getattr(ours, name), theirs.get(name))
           for name in ("chunk_simple_gla", "chunk_lightning_attn", "fused_recurrent_simple_gla")}
    return fns, error


def section_fla(args, budget):
    fns, fla_error = load_fla()
    b, h, d = args.b, args.h, args.d
    g_gamma = -slopes_for(h, args.device)
    calls = {"chunk_simple_gla": lambda fn, q, k, v: fn(q, k, v, g_gamma=g_gamma)[0],
             "chunk_lightning_attn": lambda fn, q, k, v: fn(q, k, v, 1, 8)[0]}
    rows = []
    for n in args.ns:
        q, k, v, do = (t.transpose(1, 2).contiguous()
                       for t in make_qkvdo(b, h, n, d, d, torch.bfloat16, args.device))  # (B, T, H, D)
        for name, call in calls.items():
            ref_o = None
            for impl, fn in zip(("ours", "fla"), fns[name]):
                row = {"section": "fla", "fn": name, "impl": impl, "b": b, "h": h, "n": n, "d": d,
                       "fwd_ms": None, "fwdbwd_ms": None, "diff_vs_fla": None, "error": None}
                try:
                    if fn is None:
                        raise RuntimeError(f"fla unavailable: {fla_error}")
                    if budget.exhausted():
                        raise RuntimeError("skipped: time budget")
                    qi, ki, vi = (t.detach().clone() for t in (q, k, v))
                    with torch.no_grad():
                        o = call(fn, qi, ki, vi)
                        row["fwd_ms"] = common.bench_ms(lambda: call(fn, qi, ki, vi), warmup=args.warmup,
                                                        rep=args.rep, device=args.device)
                    for t in (qi, ki, vi):
                        t.requires_grad_(True)
                    row["fwdbwd_ms"] = common.bench_ms(lambda: call(fn, qi, ki, vi).backward(do),
                                                       warmup=args.warmup, rep=args.rep,
                                                       grad_to_none=[qi, ki, vi], device=args.device)
                    if impl == "ours":
                        ref_o = o
                    elif ref_o is not None:
                        rows[-1]["diff_vs_fla"] = common.rel_err(ref_o, o)
                    del o, qi, ki, vi
                except Exception as exc:  # noqa: BLE001
                    row["error"] = common.short_err(exc)
                    if args.verbose:
                        traceback.print_exc()
                rows.append(row)
            ours_row, fla_row = rows[-2], rows[-1]
            print(f"  [fla] {name:>20} n={n}: ours {common.fmt(ours_row['fwd_ms'])}/{common.fmt(ours_row['fwdbwd_ms'])} ms, "
                  f"fla {common.fmt(fla_row['fwd_ms'])}/{common.fmt(fla_row['fwdbwd_ms'])} ms (fwd/fwd+bwd), "
                  f"diff {common.fmt(ours_row['diff_vs_fla'])}"
                  + "".join(f"  {r['impl']} ERROR {r['error']}" for r in (ours_row, fla_row) if r["error"]),
                  flush=True)
            common.free_memory()
        del q, k, v, do
        common.free_memory()
    return rows


def section_fla_decode(args, budget):
    fns, fla_error = load_fla()
    b, h, d = args.decode_b, args.h, args.d
    gen = torch.Generator(device=args.device).manual_seed(1)
    q, k, v = (torch.randn(b, 1, h, d, device=args.device, dtype=torch.bfloat16, generator=gen) for _ in range(3))
    state = torch.randn(b, h, d, d, device=args.device, generator=gen)
    g_gamma = -slopes_for(h, args.device)
    rows, ref_o = [], None
    for impl, fn in zip(("ours", "fla"), fns["fused_recurrent_simple_gla"]):
        row = {"section": "fla_decode", "fn": "fused_recurrent_simple_gla", "impl": impl, "b": b, "h": h,
               "d": d, "us": None, "diff_vs_fla": None, "error": None}
        try:
            if fn is None:
                raise RuntimeError(f"fla unavailable: {fla_error}")

            def step():
                return fn(q, k, v, g_gamma=g_gamma, initial_state=state, output_final_state=True)

            o, _ = step()
            if impl == "ours":
                ref_o = o
            elif ref_o is not None:
                rows[-1]["diff_vs_fla"] = common.rel_err(ref_o, o)
            row["us"] = 1e3 * common.bench_ms(step, warmup=args.warmup, rep=args.rep, device=args.device)
        except Exception as exc:  # noqa: BLE001
            row["error"] = common.short_err(exc)
        rows.append(row)
        print(f"  [fla_decode] {impl:>4} b={b}: {common.fmt(row['us'], 1)} us"
              + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
    return rows


# ---------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the script runs end to end")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections out of {SECTIONS}")
    p.add_argument("--out", default=None, help="folder for the json (default benchmarks/results; "
                                               "the temp folder with --smoke)")
    p.add_argument("--name", default="integrations", help="json file name without .json")
    p.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    # the model
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=2048, help="hidden size of each expert")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--experts-per-tok", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prefill-ns", default="8192,16384,32768,65536")
    p.add_argument("--gen-prompt", type=int, default=1024)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--gen-batches", default="1,16")
    # the FLA drop-ins (bench_lightning's shapes)
    p.add_argument("--b", type=int, default=4)
    p.add_argument("--h", type=int, default=32)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--ns", default="1024,4096,16384,32768")
    p.add_argument("--decode-b", type=int, default=64)
    # timing
    p.add_argument("--warmup", type=float, default=25, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=100, help="do_bench repeat, ms")
    p.add_argument("--no-mem", dest="mem", action="store_false", help="skip the peak-memory calls")
    p.add_argument("--budget-s", type=float, default=500.0,
                   help="wall-clock budget: measurements past it are skipped (0 = none)")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
        args.layers, args.hidden, args.heads, args.head_dim = 2, 64, 4, 16
        args.intermediate, args.experts, args.vocab = 64, 2, 128
        args.prefill_ns, args.gen_prompt, args.gen_tokens, args.gen_batches = "64,300", 32, 8, "1,2"
        args.b, args.h, args.d, args.ns, args.decode_b = 1, 2, 32, "128", 2
        args.warmup, args.rep = 1, 5
        args.out = args.out or tempfile.gettempdir()
        args.name = args.name if args.name != "integrations" else "integrations_smoke"
    args.device = args.device or "cuda"
    args.out = args.out or common.RESULTS_DIR
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown section(s) {bad}; choose from {SECTIONS}")
    ints = lambda text: [int(x) for x in str(text).split(",")]  # noqa: E731
    args.prefill_ns, args.gen_batches, args.ns = ints(args.prefill_ns), ints(args.gen_batches), ints(args.ns)
    args.dtype = torch.bfloat16
    return args


def main(argv=None):
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_integrations: no CUDA device (use --smoke for a CPU run)")
    budget = common.Budget(args.budget_s)
    meta = common.metadata(dev)
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        meta["transformers"] = None
    result = {
        "bench": "integrations",
        "meta": meta,
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list, tuple, bool))},
        "rows": [],
        "sections_done": [],
    }
    print(f"[bench_integrations] {meta.get('gpu') or args.device} torch {torch.__version__} "
          f"transformers {meta['transformers']} sections={args.sections} smoke={args.smoke}", flush=True)
    model = None

    def rows_of(section):
        nonlocal model
        if section in ("prefill", "generate"):
            if model is None:
                model = build_model(args)
                result["model_params"] = sum(p.numel() for p in model.parameters())
            runner = section_prefill if section == "prefill" else section_generate
            return runner(model, args, budget)
        runner = section_fla if section == "fla" else section_fla_decode
        return runner(args, budget)

    for section in args.sections:
        common.run_section("bench_integrations", section, lambda: rows_of(section), result, budget,
                           args.name, args.out)
    print(f"[bench_integrations] total {budget.elapsed():.0f} s", flush=True)


if __name__ == "__main__":
    main()
