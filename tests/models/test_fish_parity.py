"""Parity with upstream fish-speech 0.1.0 on small random models (fp32): the same state dict gives
the same logits, checkpoint folders load both ways, LoRA merges like loralib, prompts and greedy
generation match."""

import dataclasses
import json
import shutil

import pytest
import torch
from conftest import write_tokenizer_dir
from upstream import upstream_fish_speech

from tts_lib.models.fish_speech.checkpoint import load_state_dict_file, merge_loralib_lora, split_lora
from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.generate import build_prompt, generate
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.tokenizer import FishTokenizer

TOL = 1e-4
BASE = dict(
    vocab_size=1024, n_layer=2, n_head=4, n_local_heads=2, dim=64, head_dim=16, intermediate_size=128,
    codebook_size=32, num_codebooks=4, n_fast_layer=2, max_seq_len=128, rope_base=1e6, norm_eps=1e-6,
)  # fmt: skip
VARIANTS = {
    "tied-plain": dict(),
    "s1-like": dict(
        tie_word_embeddings=False, attention_qk_norm=True, scale_codebook_embeddings=True,
        fast_head_dim=8, fast_attention_qk_norm=False,
    ),
    "project-in-bias": dict(
        scale_codebook_embeddings=True, attention_qk_norm=True, attention_qkv_bias=True, attention_o_bias=True,
        fast_dim=48, fast_n_head=6, fast_n_local_heads=3, fast_head_dim=8, fast_intermediate_size=96,
    ),
    "untied-unscaled-project-in": dict(tie_word_embeddings=False, fast_dim=32, fast_n_head=2, head_dim=32),
}  # fmt: skip


@pytest.fixture(scope="module")
def up():
    return upstream_fish_speech()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_tokenizer_dir(tmp_path_factory.mktemp("tok"), num_semantic=32)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return FishTokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def utok(up, tok_dir):
    return up.tokenizer.FishTokenizer.from_pretrained(str(tok_dir))


def ours_random(cfg: dict, tok: FishTokenizer, seed: int = 0) -> FishSpeechLM:
    torch.manual_seed(seed)
    model = FishSpeechLM(FishSpeechConfig(**cfg), tok.semantic_ids[0], tokenizer=tok).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mixed-up norm or bias would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


def theirs_from(up, utok, model: FishSpeechLM):
    args = up.llama.DualARModelArgs(**model.config.to_dict())
    theirs = up.llama.DualARTransformer(args, tokenizer=utok).eval()
    theirs.load_state_dict(model.state_dict(), strict=True)
    return theirs


def sequence(tok: FishTokenizer, n_text: int = 9, frames: int = 12, num_codebooks: int = 4, seed: int = 1):
    """(1, 1 + nc, T): text tokens, then frames with their codes, then <|im_end|>."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 32, (num_codebooks, frames), generator=g)
    row0 = torch.cat([torch.randint(0, 900, (n_text,), generator=g), codes[0] + tok.semantic_ids[0]])
    row0 = torch.cat([row0, torch.tensor([tok.token_id("<|im_end|>")])])
    rows = torch.zeros(num_codebooks, len(row0), dtype=torch.long)
    rows[:, n_text : n_text + frames] = codes
    return torch.cat([row0[None], rows])[None]


def their_slow(up, theirs, tokens):
    with torch.no_grad():  # the unbound base method: all positions, hidden before fast_project_in
        out = up.llama.BaseTransformer.forward_generate(theirs, tokens, return_all=True)
    return out.logits, out.hidden_states


def their_fast(theirs, hidden_last, codes):
    """Upstream's inference path for one frame: cached fast layers, position by position."""
    nc = theirs.config.num_codebooks
    theirs.setup_caches(max_batch_size=1, max_seq_len=theirs.config.max_seq_len, dtype=torch.float32)
    for layer in theirs.fast_layers:
        layer.attention.kv_cache.k_cache.fill_(0)
        layer.attention.kv_cache.v_cache.fill_(0)
    out = []
    with torch.no_grad():
        x = theirs.fast_project_in(hidden_last[None])
        for k in range(nc):
            out.append(theirs.forward_generate_fast(x, torch.tensor([k]))[0, 0])
            x = theirs.fast_embeddings(codes[k : k + 1])
    for layer in theirs.layers:  # forward_generate over a whole sequence needs cache-free layers
        layer.attention.kv_cache = None
    for layer in theirs.fast_layers:
        layer.attention.kv_cache = None
    theirs.max_seq_len = theirs.max_batch_size = -1
    return torch.stack(out)  # (nc, codebook_size)


def assert_same_logits(up, ours: FishSpeechLM, theirs, tok) -> dict[str, float]:
    tokens = sequence(tok, num_codebooks=ours.config.num_codebooks)
    with torch.no_grad():
        logits, hidden = ours(tokens)
    their_logits, their_hidden = their_slow(up, theirs, tokens)
    diffs = {"slow": (logits - their_logits).abs().max().item(), "hidden": (hidden - their_hidden).abs().max().item()}
    frame = 9 + 3  # a frame in the middle; its hidden state is the position before it
    codes = tokens[0, 1:, frame]
    with torch.no_grad():
        fast = ours.fast_logits(hidden[:, frame - 1], codes[None])[0]
    diffs["fast"] = (fast - their_fast(theirs, their_hidden[0, frame - 1], codes)).abs().max().item()
    assert max(diffs.values()) <= TOL, diffs
    return diffs


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_upstream(up, tok, utok, variant):
    ours = ours_random({**BASE, **VARIANTS[variant]}, tok)
    theirs = theirs_from(up, utok, ours)
    assert_same_logits(up, ours, theirs, tok)
    # What upstream's decode step hands the fast transformer: the last hidden state, projected.
    tokens = sequence(tok)
    with torch.no_grad():
        last = up.llama.DualARTransformer.forward_generate(theirs, tokens).hidden_states[:, -1]
        assert (ours.fast_project_in(ours(tokens)[1][:, -1]) - last).abs().max() <= TOL


def test_upstream_training_embedding_skips_the_scaling(up, tok, utok):
    """Upstream's training forward embeds without the sqrt(num_codebooks + 1) division its inference
    applies; we use the inference rule everywhere. Without scaling the two paths agree."""
    tokens = sequence(tok)
    for scale, same in ((False, True), (True, False)):
        ours = ours_random({**BASE, "scale_codebook_embeddings": scale}, tok)
        theirs = theirs_from(up, utok, ours)
        with torch.no_grad():
            train_path = up.llama.BaseTransformer.forward(theirs, tokens).logits
            assert ((ours.slow_logits(tokens) - train_path).abs().max() <= TOL) == same


@pytest.mark.parametrize("variant", ["tied-plain", "s1-like", "project-in-bias"])
def test_checkpoint_folders_load_both_ways(up, tok, utok, tok_dir, tmp_path, variant):
    ours = ours_random({**BASE, **VARIANTS[variant]}, tok)
    folder = ours.save_pretrained(tmp_path / "ours")  # config, weights and tokenizer files: nothing to copy
    theirs = up.llama.BaseTransformer.from_pretrained(str(folder), load_weights=True).eval()
    assert isinstance(theirs, up.llama.DualARTransformer)
    mine, loaded = ours.state_dict(), theirs.state_dict()  # upstream loads with strict=False: every key must land
    assert loaded.keys() == mine.keys() and all(torch.equal(loaded[k], v) for k, v in mine.items())
    theirs.load_state_dict(torch.load(folder / "model.pth", weights_only=True), strict=True)  # no missing/extra
    assert dataclasses.asdict(up.llama.BaseModelArgs.from_pretrained(str(folder))) == ours.config.to_dict()
    assert_same_logits(up, ours, theirs, tok)

    torch.manual_seed(5)
    theirs = up.llama.DualARTransformer(up.llama.DualARModelArgs(**ours.config.to_dict()), tokenizer=utok).eval()
    theirs.save_pretrained(str(tmp_path / "theirs"))
    back = FishSpeechLM.from_pretrained(tmp_path / "theirs").eval()
    assert back.config == FishSpeechConfig.from_dict(json.loads((tmp_path / "theirs/config.json").read_text()))
    assert back.config.to_dict() == dataclasses.asdict(theirs.config)
    assert_same_logits(up, back, theirs, tok)


def test_lightning_checkpoint_loads_in_both(up, tok, tok_dir, tmp_path):
    ours = ours_random({**BASE, **VARIANTS["s1-like"]}, tok)
    folder = ours.save_pretrained(tmp_path / "ckpt")
    wrapped = {"state_dict": {"model." + k: v for k, v in ours.state_dict().items()}, "global_step": 7, "epoch": 0}
    torch.save(wrapped, folder / "model.pth")
    state = load_state_dict_file(folder / "model.pth")
    assert state.keys() == ours.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())
    theirs = up.llama.BaseTransformer.from_pretrained(str(folder), load_weights=True).eval()
    assert_same_logits(up, FishSpeechLM.from_pretrained(folder).eval(), theirs, tok)


def test_merged_loralib_checkpoint_matches_upstream_lora_model(up, tok, utok, tmp_path):
    ours = ours_random({**BASE, **VARIANTS["s1-like"]}, tok)  # setup_lora needs an untied `output`
    args = up.llama.DualARModelArgs(**ours.config.to_dict())
    theirs = up.llama.DualARTransformer(args, tokenizer=utok)
    up.lora.setup_lora(theirs, up.lora.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not result.unexpected_keys and all("lora_" in k for k in result.missing_keys)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1)
    theirs.train()  # unmerged: loralib adds B(A x) on the fly
    lora = {k: v.clone() for k, v in theirs.state_dict().items() if "lora_" in k}
    assert {k.rsplit(".", 2)[-2] for k in lora} >= {"embeddings", "codebook_embeddings", "fast_embeddings", "wqkv"}
    # upstream's Lightning module saves only the LoRA weights of a LoRA run
    torch.save({"state_dict": {"model." + k: v for k, v in lora.items()}}, tmp_path / "lora.ckpt")

    base, loaded = split_lora(load_state_dict_file(tmp_path / "lora.ckpt"))
    assert not base and loaded.keys() == lora.keys()
    merged = FishSpeechLM(ours.config, tok.semantic_ids[0]).eval()
    merged.load_state_dict(merge_loralib_lora(ours.state_dict(), loaded, alpha=8, r=4))
    assert (merged.slow_logits(sequence(tok)) - ours.slow_logits(sequence(tok))).abs().max() > 1e-2  # it changed

    unmerged_logits, _ = their_slow(up, theirs, sequence(tok))
    with torch.no_grad():
        assert (merged.slow_logits(sequence(tok)) - unmerged_logits).abs().max() <= TOL
    theirs.eval()  # loralib merges into the weights here
    assert_same_logits(up, merged, theirs, tok)


def test_prompt_matches_upstream_content_sequence(up, tok_dir):
    # Give the tokenizer the control tokens as specials, as the released tokenizers have them.
    specials = json.loads((tok_dir / "special_tokens.json").read_text())
    names = [n for n in specials if not n.startswith("<|semantic")] + ["<|interleave|>", "<|speaker:0|>"]
    names += [n for n in specials if n.startswith("<|semantic")]
    folder = tok_dir.parent / "tok_with_controls"
    folder.mkdir(exist_ok=True)
    shutil.copy(tok_dir / "tokenizer.tiktoken", folder / "tokenizer.tiktoken")
    first = min(specials.values())
    (folder / "special_tokens.json").write_text(json.dumps({n: first + i for i, n in enumerate(names)}))

    cs = up.content_sequence
    ref_codes = torch.randint(0, 32, (4, 5))
    for tokenizer_dir in (tok_dir, folder):  # controls as BPE text, then as special tokens
        utok = up.tokenizer.FishTokenizer.from_pretrained(str(tokenizer_dir))
        seq = cs.ContentSequence(modality="interleave")
        seq.append([cs.TextPart(text="hello there"), cs.VQPart(codes=ref_codes)], add_end=True, speaker=0)
        seq.append([cs.TextPart(text="world, hello")], add_end=False, speaker=0)
        expected, _, _ = seq.encode_for_inference(utok, num_codebooks=4)
        ours = build_prompt(
            FishTokenizer.from_dir(tokenizer_dir),
            "world, hello",
            num_codebooks=4,
            references=[("hello there", ref_codes)],
        )
        assert torch.equal(ours, expected.long())


def test_greedy_generation_matches_upstream(up, tok, utok):
    cfg = {**BASE, **VARIANTS["s1-like"], "vocab_size": tok.vocab_size}
    ours = ours_random(cfg, tok)
    with torch.no_grad():  # only semantic tokens score above zero: upstream samples the whole vocabulary
        semantic = torch.zeros(cfg["vocab_size"], dtype=torch.bool)
        semantic[tok.semantic_ids] = True
        ours.output.weight[~semantic] = 0
        ours.output.weight[semantic] *= 20
    theirs = theirs_from(up, utok, ours)
    prompt = build_prompt(tok, "hello world", num_codebooks=4, references=[("hello", torch.randint(0, 32, (4, 6)))])
    settings = dict(temperature=1e-5, top_p=0.8, repetition_penalty=1.0)  # greedy
    with torch.no_grad():
        expected = up.inference.generate(
            model=theirs, prompt=prompt, max_new_tokens=8, audio_masks=None, audio_parts=None, **settings
        )[1:, prompt.shape[1] :]
    im_end = tok.token_id("<|im_end|>")
    codes = generate(ours, prompt, max_new_tokens=8, im_end_id=im_end, constrain_to_semantic=False, seed=0, **settings)
    assert codes.shape == (4, 8)
    assert torch.equal(codes, expected.long())
