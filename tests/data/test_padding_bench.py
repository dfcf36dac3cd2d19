"""Padding benchmark: the efficiency measure, the random baseline, reading durations, the command."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from tts_lib.data.padding_bench import (
    S1_MINI_FRAME_RATE,
    add_arguments,
    padding_efficiency,
    random_batches,
    read_durations,
    run,
)
from tts_lib.data.sampler import LengthBucketedBatchSampler, frames_for_duration

BENCH_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "durations_ljspeech_like.txt"


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_padding_efficiency_counts_padded_tokens_per_batch():
    lengths = [2, 4, 3, 3]
    # real 2+4+3+3 = 12; padded 2*4 + 2*3 = 14
    assert padding_efficiency([[0, 1], [2, 3]], lengths) == pytest.approx(12 / 14)
    assert padding_efficiency([[0], [1], [2], [3]], lengths) == 1.0
    with pytest.raises(ValueError):
        padding_efficiency([], lengths)


@pytest.mark.parametrize("max_items", [None, 3])
def test_random_batches_cover_every_item_under_the_budget(max_items):
    lengths = [(7 * i) % 97 + 1 for i in range(500)]
    batches = random_batches(lengths, 200, max_items, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 200
        assert max_items is None or len(b) <= max_items
    assert random_batches(lengths, 200, max_items, seed=1) == batches
    assert random_batches(lengths, 200, max_items, seed=2) != batches


def test_benchmark_file_matches_the_published_ljspeech_statistics():
    seconds = read_durations(BENCH_FILE)
    assert len(seconds) == 13_100
    assert min(seconds) == pytest.approx(1.11)
    assert max(seconds) == pytest.approx(10.10)
    assert sum(seconds) / len(seconds) == pytest.approx(6.57, abs=0.01)
    assert sum(seconds) / 3600 == pytest.approx(23.9, abs=0.1)
    assert sum(4 <= s <= 10.1 for s in seconds) > 0.75 * len(seconds)
    header = BENCH_FILE.read_text().splitlines()[:6]
    assert any("synthetic" in line.lower() for line in header)
    assert any("make_durations.py" in line for line in header)


@pytest.mark.parametrize("max_tokens", [4096, 8192])
def test_bucketed_batches_waste_under_five_percent_on_the_benchmark(max_tokens):
    lengths = [frames_for_duration(s, S1_MINI_FRAME_RATE) for s in read_durations(BENCH_FILE)]
    sampler = LengthBucketedBatchSampler(lengths, max_tokens, seed=0)
    bucketed = padding_efficiency(sampler.global_batches(0), lengths)
    baseline = padding_efficiency(random_batches(lengths, max_tokens, seed=0), lengths)
    assert bucketed >= 0.95
    assert baseline < bucketed - 0.15


def test_bench_command_last_line(capsys):
    assert run(bench_args("--durations", str(BENCH_FILE), "--max-tokens", "6000", "--epochs", "2")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 3
    assert "13100" in lines[0]
    match = re.fullmatch(r"bucketed_efficiency=(\d\.\d{4}) random_efficiency=(\d\.\d{4})", lines[-1])
    assert match, lines[-1]
    assert float(match[1]) >= 0.95
    assert float(match[2]) < float(match[1])


def test_bench_reads_a_jsonl_manifest(tmp_path, capsys):
    manifest = tmp_path / "train.jsonl"
    rows = [
        {"id": f"a{k}", "audio": f"a{k}.wav", "text": "hi", "speaker": "s", "duration": 1 + k % 9} for k in range(50)
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_durations(manifest) == [float(r["duration"]) for r in rows]
    assert run(bench_args("--durations", str(manifest), "--max-tokens", "1000", "--max-items", "4")) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("bucketed_efficiency=")


def test_bench_rejects_a_budget_smaller_than_the_longest_clip(tmp_path):
    durations = tmp_path / "d.txt"
    durations.write_text("1.0\n20.0\n")
    with pytest.raises(ValueError, match="1 items are longer than max_tokens=100"):
        run(bench_args("--durations", str(durations), "--max-tokens", "100"))


def test_read_durations_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("# header\n\n1.5\n  # indented comment\n 2.25 \n\n")
    assert read_durations(path) == [1.5, 2.25]


@pytest.mark.parametrize(
    "name,text,line,found",
    [
        ("d.txt", "# c\n1.0\nabc\n", 3, "abc"),
        ("d.txt", "1.0\n-2\n", 2, "-2"),
        ("d.txt", "1.0\nnan\n", 2, "nan"),
        ("m.jsonl", '{"duration": 1.0}\n{"id": "x"}\n', 2, '{"id": "x"}'),
        ("m.jsonl", '{"duration": 1.0}\n{"duration": "long"}\n', 2, "long"),
        ("m.jsonl", '{"duration": 1.0}\n{"duration": null}\n', 2, "None"),
        ("m.jsonl", '{"duration": 1.0}\n\n{oops\n', 3, "{oops"),
    ],
)
def test_read_durations_names_file_line_and_text(tmp_path, name, text, line, found):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        read_durations(path)
    message = str(e.value)
    assert str(path) in message
    assert f"line {line}" in message
    assert found in message


def test_read_durations_refuses_a_file_without_durations(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="no durations"):
        read_durations(path)
