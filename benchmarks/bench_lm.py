"""Text-to-semantic model: training throughput of ours vs upstream, and peak memory when loading.

1. Forward + backward tokens/s on one S1-mini-shaped model of reduced depth (S1-mini widths and
   heads, fewer layers, optionally a smaller vocabulary), batch 1, for tts_lib's FishSpeechLM and
   upstream fish-speech 0.1.0's DualARTransformer with the same weights. Upstream 0.1.0's own
   training forward crashes (it passes arguments its base class does not take), so its step is the
   fixed training forward of the last S1-era commit (d3df505) run on 0.1.0's modules.
2. Peak RSS of a fresh process loading an S1-mini-sized random bf16 checkpoint written to a temp dir,
   relative to the checkpoint's size (goal <= 1.3x for ours).

    python benchmarks/bench_lm.py                 # defaults: 2 slow + 1 fast layer, vocab 16384
    python benchmarks/bench_lm.py --vocab 155776  # the real vocabulary (slow on CPU)

Upstream is found in .pytest_cache/upstream (the parity tests install it there) or site-packages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".pytest_cache" / "upstream"))

from tts_lib.models.fish_speech.config import S1_MINI_CONFIG, FishSpeechConfig  # noqa: E402
from tts_lib.models.fish_speech.lm import FishSpeechLM  # noqa: E402

S1_MINI = S1_MINI_CONFIG


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    return (
        f"{cpu}, {os.cpu_count()} cores, {int(mem) / 2**20:.0f} GiB RAM, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def upstream_llama():
    try:
        from fish_speech.models.text2semantic import llama
    except ImportError as e:
        print(f"upstream fish-speech not importable ({e}); run tests/models/test_fish_parity.py once to install it")
        return None
    return llama


def semantic_begin(cfg: FishSpeechConfig) -> int:
    return cfg.vocab_size - cfg.codebook_size - 22  # where S1-mini's tokenizer puts them, relative to the end


def make_batch(cfg: FishSpeechConfig, seq: int, n_text: int = 100):
    """Input and labels (1, 1 + nc, seq): text, then frames, labels shifted by one."""
    g = torch.Generator().manual_seed(0)
    begin = semantic_begin(cfg)
    full = torch.zeros(1, 1 + cfg.num_codebooks, seq + 1, dtype=torch.long)
    full[0, 0, :n_text] = torch.randint(0, begin, (n_text,), generator=g)
    full[0, 1:, n_text:] = torch.randint(0, 1024, (cfg.num_codebooks, seq + 1 - n_text), generator=g)
    full[0, 0, n_text:] = full[0, 1, n_text:] + begin
    return full[:, :, :-1], full[:, :, 1:]


def ours_step(model: FishSpeechLM, inp, labels) -> None:
    logits, hidden = model(inp)
    is_frame = labels[:, 0] >= model.semantic_begin_id  # (B, T): the next token is a frame
    codes = labels[:, 1:].transpose(1, 2)[is_frame]  # (N, nc)
    codebook_logits = model.fast_logits(hidden[is_frame], codes)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels[:, 0].flatten())
    loss = loss + F.cross_entropy(codebook_logits.flatten(0, 1).float(), codes.flatten())
    loss.backward()


def upstream_step(model, inp, labels) -> None:
    """d3df505's DualARTransformer.forward (0.1.0's crashes) on 0.1.0's modules, then the same loss."""
    from fish_speech.models.text2semantic.llama import BaseTransformer
    from torch.utils.checkpoint import checkpoint

    out = BaseTransformer.forward(model, inp)  # the slow transformer
    token_labels = labels[:, 0]
    mask = (token_labels >= model.tokenizer.semantic_begin_id) & (token_labels <= model.tokenizer.semantic_end_id)
    codes = labels[:, 1:].permute(0, 2, 1)[mask]
    x = model.fast_project_in(out.hidden_states[mask])
    x = torch.cat([x[:, None], model.fast_embeddings(codes[:, :-1])], dim=1)
    n = model.config.num_codebooks
    fast_mask, freqs = model.causal_mask[None, None, :n, :n], model.fast_freqs_cis[:n]
    for layer in model.fast_layers:
        if model.config.use_gradient_checkpointing and model.training:
            x = checkpoint(layer, x, freqs, fast_mask, use_reentrant=True)
        else:
            x = layer(x, freqs, fast_mask)
    codebook_logits = model.fast_output(model.fast_norm(x))
    loss = F.cross_entropy(out.logits.flatten(0, 1).float(), token_labels.flatten())
    loss = loss + F.cross_entropy(codebook_logits.flatten(0, 1).float(), codes.flatten())
    loss.backward()


def timed(runs: list[tuple], inp, labels, steps: int) -> list[float]:
    """Median seconds per step of each (step, model); steps alternate between the models so that
    load from other processes hits both alike."""
    times: list[list[float]] = [[] for _ in runs]
    for i in range(steps + 1):  # the first round is warm-up
        for (step, model), out in zip(runs, times):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            step(model, inp, labels)
            if i:
                out.append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def throughput(args) -> None:
    over = {"n_layer": args.layers, "n_fast_layer": args.fast_layers, "vocab_size": args.vocab}
    cfg = FishSpeechConfig(**{**S1_MINI, **over})
    torch.manual_seed(0)
    ours = FishSpeechLM(cfg, semantic_begin(cfg)).train()
    inp, labels = make_batch(cfg, args.seq)
    params = sum(p.numel() for p in ours.parameters())
    print(f"\n## forward+backward, batch 1 x {args.seq} tokens, fp32, {args.steps} timed steps (median)")
    print(f"config: S1-mini widths/heads, n_layer {args.layers}, n_fast_layer {args.fast_layers}, vocab {args.vocab}")
    print(f"        ({params / 1e6:.0f}M parameters; S1-mini has 28 + 4 layers and vocab 155776)")
    llama = upstream_llama()
    runs = [(ours_step, ours)]
    if llama is not None:
        begin = semantic_begin(cfg)
        fake_tokenizer = SimpleNamespace(
            semantic_id_to_token_id={i: begin + i for i in range(cfg.codebook_size)},
            semantic_begin_id=begin,
            semantic_end_id=begin + cfg.codebook_size - 1,
        )
        theirs = llama.DualARTransformer(llama.DualARModelArgs(**cfg.to_dict()), tokenizer=fake_tokenizer).train()
        theirs.load_state_dict(ours.state_dict())
        runs.append((upstream_step, theirs))
    for checkpointing in (False, True):
        ours.gradient_checkpointing = checkpointing
        if len(runs) > 1:
            runs[1][1].config.use_gradient_checkpointing = checkpointing
        seconds = timed(runs, inp, labels, args.steps)
        line = f"checkpointing {'on ' if checkpointing else 'off'}: ours {args.seq / seconds[0]:6.1f} tok/s"
        if len(seconds) > 1:
            line += f", upstream {args.seq / seconds[1]:6.1f} tok/s, ours/upstream {seconds[1] / seconds[0]:.2f}x"
        print(line)


# ---- loading memory -----------------------------------------------------------------------


def write_random_checkpoint(folder: Path) -> int:
    cfg = FishSpeechConfig(**S1_MINI)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in FishSpeechLM(cfg, semantic_begin(cfg)).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {k: torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02, generator=g) for k, s in shapes.items()}
    torch.save(state, folder / "model.pth")
    del state
    cfg.save(folder / "config.json")
    # upstream's loader wants tokenizer files; a byte-level BPE plus the semantic tokens will do
    import base64

    (folder / "tokenizer.tiktoken").write_text(
        "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
    )
    names = ["<|im_end|>"] + [f"<|semantic:{i}|>" for i in range(cfg.codebook_size)]
    (folder / "special_tokens.json").write_text(json.dumps({n: 256 + i for i, n in enumerate(names)}))
    return (folder / "model.pth").stat().st_size


def status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc: unlike ru_maxrss, it starts afresh at
    exec and does not inherit the parent's peak."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def measure_load(folder: str, which: str) -> None:
    """Run in a fresh process: print JSON with RSS before and after loading and touching every weight."""
    if which == "upstream":
        llama = upstream_llama()
    before = status_bytes("VmRSS")
    t = time.perf_counter()
    if which == "ours":
        model = FishSpeechLM.from_pretrained(folder, semantic_begin_id=257)
    else:
        model = llama.BaseTransformer.from_pretrained(folder, load_weights=True)
    seconds = time.perf_counter() - t
    # one element per 4 KiB page: every page is read, and no float copy of a big weight inflates the peak
    checksum = sum(float(p.detach().view(-1)[:: 4096 // p.element_size()].float().sum()) for p in model.parameters())
    print(json.dumps({"before": before, "peak": status_bytes("VmHWM"), "seconds": seconds, "checksum": checksum}))


def loading(args) -> None:
    print("\n## peak RSS loading an S1-mini-sized random checkpoint (bf16), fresh process each")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        size = write_random_checkpoint(Path(tmp))
        print(f"checkpoint: {size / 2**30:.2f} GiB model.pth, written in {time.perf_counter() - t:.0f} s")
        for which in ("ours", "upstream") if upstream_llama() is not None else ("ours",):
            cmd = [sys.executable, __file__, "--measure-load", tmp, which]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(
                f"{which:8s}: peak RSS {r['peak'] / 2**30:.2f} GiB = {r['peak'] / size:.2f}x the checkpoint "
                f"({(r['peak'] - r['before']) / size:.2f}x above the {r['before'] / 2**30:.2f} GiB before loading), "
                f"load {r['seconds']:.1f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--fast-layers", type=int, default=1)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-loading", action="store_true")
    parser.add_argument("--measure-load", nargs=2, metavar=("FOLDER", "WHICH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_load:
        measure_load(*args.measure_load)
        return
    print(f"machine: {machine()}")
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_loading:
        loading(args)


if __name__ == "__main__":
    main()
