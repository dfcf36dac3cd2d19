"""Model card and download package of a version folder: the card says what the model is and how to
use it, the archive holds exactly the version's outputs under one top folder, extracts to a loadable
checkpoint, never holds absolute or '..' paths or files from outside, and is never overwritten."""

import shutil
import tarfile

import pytest

from tts_lib.models import load_family
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.training.adapters import AdapterConfig, add_adapters, save_adapter
from tts_lib.versions.lineage import write_metadata
from tts_lib.versions.package import CARD_FILE, model_card, package_version

META = {
    "version": "fi-v2", "number": 2, "mode": "quick_lora",
    "parent": {"version": "fi-v1", "folder": "runs/fi-v1", "checkpoint": "runs/fi-v1/merged"},
    "base_model": {"id": "openaudio-s1-mini", "hash": "abcdef0123456789" * 4},
    "dataset_fingerprint": "f00d", "samples": {"new": 40, "total": 120}, "hours": {"new": 0.5, "total": 1.25},
    "steps": 300, "hyperparameters": {"lr": 1e-4, "r": 8, "lora_alpha": 16},
    "best_val": {"lora.val_codebook_loss": 2.3125}, "wall_time_s": 1234.5,
    "cost": {"gpu": "A100 80GB", "estimated_usd": 1.5, "actual_usd": 1.25, "estimated_hours": 0.75},
    "created_at": "2026-01-02T03:04:05+00:00",
    "outputs": {"manifest": "data/manifest.jsonl", "merged_dir": "merged", "adapter_dir": "train/final_adapter"},
}  # fmt: skip


@pytest.fixture
def version(prepared, tmp_path):
    """runs/fi-v2 with a merged model (the tiny base's files), an adapter and its metadata."""
    folder = tmp_path / "runs" / "fi-v2"
    shutil.copytree(prepared[0], folder / "merged")
    family = load_family(prepared[0])
    model = add_adapters(family.load_model(), AdapterConfig())
    save_adapter(model, folder / "train" / "final_adapter", AdapterConfig(), family.identity())
    (folder / "data").mkdir()
    (folder / "data" / "manifest.jsonl").write_text("{}\n")
    (folder / "train" / "checkpoints").mkdir()
    (folder / "train" / "checkpoints" / "big.pt").write_bytes(b"optimizer state")
    write_metadata(folder, META)
    return folder


def test_card_names_version_licence_metrics_and_how_to_load(version):
    card = model_card(META)
    assert card.startswith("# fi-v2 (version 2)")
    assert "CC-BY-NC-SA-4.0" in card and "Non-commercial" in card
    assert "| lora.val_codebook_loss | 2.312 |" in card and "| r | 8 |" in card
    assert "sha256 abcdef012345)" in card and "$1.25" in card and "parent: fi-v1" in card
    assert "--checkpoint-path merged " in card and "merged/codec.pth" in card
    assert "fish_speech.models.text2semantic.inference" in card and '"train/final_adapter"' in card
    assert "| samples | 40 | 120 |" in card


def test_a_tiny_demo_fine_tune_says_what_it_is():
    card = model_card({**META, "base_model": {**META["base_model"], "id": "tiny-demo", "random_weights": True}})
    assert "random tiny-demo model (not OpenAudio S1-mini)" in card and "noise" in card
    assert "CC-BY-NC-SA-4.0" not in card and "Apache-2.0" in card
    assert "A Fish Speech (OpenAudio S1-mini) text-to-speech fine-tune" in model_card(META)


def test_card_tolerates_missing_optional_keys():
    card = model_card({"version": "v1", "number": 1, "mode": "full", "base_model": {"id": "b"}, "parent": None})
    assert card.startswith("# v1 (version 1)") and "n/a" in card and "No merged model" in card
    assert "parent: none" in card


def test_package_holds_the_outputs_and_extracts_to_a_loadable_model(version, tmp_path):
    tar_path = package_version(version)
    assert tar_path == version / "fi-v2.tar.gz"
    assert (version / CARD_FILE).read_text() == model_card(META)
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        assert all(m.isfile() for m in tar.getmembers())
        tar.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert all(n.startswith("fi-v2/") and not n.startswith("/") and ".." not in n.split("/") for n in names)
    assert {"fi-v2/metadata.json", "fi-v2/MODEL_CARD.md", "fi-v2/merged/model.pth", "fi-v2/merged/codec.pth",
            "fi-v2/train/final_adapter/adapter_model.safetensors",
            "fi-v2/train/final_adapter/tts_adapter.json"} <= set(names)  # fmt: skip
    assert not any("checkpoints" in n or "manifest" in n or n.endswith(".tar.gz") for n in names)
    model = FishSpeechLM.from_pretrained(tmp_path / "unpacked" / "fi-v2" / "merged")
    assert model.config == FishSpeechLM.from_pretrained(version / "merged").config

    with pytest.raises(FileExistsError, match="fi-v2.tar.gz already exists"):
        package_version(version)
    assert package_version(version, overwrite=True) == tar_path
    assert [p.name for p in version.iterdir() if p.name.startswith(".")] == []


def test_links_out_of_the_version_are_refused_links_inside_are_copied(version, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for download")
    (version / "merged" / "notes.txt").symlink_to(version / "merged" / "config.json")
    package_version(version, tmp_path / "ok.tar.gz")
    with tarfile.open(tmp_path / "ok.tar.gz") as tar:
        member = tar.getmember("fi-v2/merged/notes.txt")
        assert member.isfile() and tar.extractfile(member).read() == (version / "merged" / "config.json").read_bytes()

    (version / "merged" / "leak.txt").symlink_to(secret)
    with pytest.raises(ValueError, match="leak.txt.*outside the version folder"):
        package_version(version, tmp_path / "leak.tar.gz")
    assert not (tmp_path / "leak.tar.gz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_outputs_outside_the_version_are_refused(version, tmp_path):
    write_metadata(version, {**META, "outputs": {"merged_dir": "../elsewhere"}})
    with pytest.raises(ValueError, match="outputs.merged_dir.*inside it"):
        package_version(version)
    (tmp_path / "runs" / "outside").mkdir()
    (version / "linked").symlink_to(tmp_path / "runs" / "outside")
    write_metadata(version, {**META, "outputs": {"merged_dir": "linked"}})
    with pytest.raises(ValueError, match="outside the version folder"):
        package_version(version)
    assert not (version / "fi-v2.tar.gz").exists()


def test_every_model_folder_gets_the_card_as_readme_and_the_archive_holds_it(version):
    from tts_lib.versions.package import README_FILE, write_model_cards

    forgetting = {"metric": "val_codebook_loss", "margin": 0.05, "flagged": True, "note": "rose +9.0%",
                  "old_data": {"before": 2.0, "after": 2.18, "change": 0.18, "items": 3},
                  "new_data": {"before": None, "after": None, "change": None, "items": 0}}  # fmt: skip
    write_metadata(version, {**META, "forgetting": forgetting, "quality": {"cer": 0.04}})
    written = write_model_cards(version)
    assert sorted(p.parent.name for p in written) == ["final_adapter", "merged"]
    card = (version / "merged" / README_FILE).read_text()
    assert card == (version / "train" / "final_adapter" / README_FILE).read_text()
    for section in ("## Lineage", "## Metrics", "## Licence", "## Data", "## How to use"):
        assert section in card
    assert "| old_data (3 items) | 2 -> 2.18 |" in card and "FLAGGED (margin 0.05)" in card and "| cer | 0.04 |" in card
    assert "AdapterBank" in card and 'FishSpeechLM.from_pretrained("merged")' in card
    assert "not measured" in model_card(META)  # no forgetting check, no quality metrics
    with tarfile.open(package_version(version)) as tar:
        names = set(tar.getnames())
    assert {"fi-v2/merged/README.md", "fi-v2/train/final_adapter/README.md"} <= names


def test_measured_quality_reaches_metadata_cards_and_package(version):
    from tts_lib.versions.lineage import read_metadata
    from tts_lib.versions.package import record_quality

    archive = package_version(version)
    assert record_quality(version, {"available": False, "reason": "offline"}) is None
    assert "quality" not in read_metadata(version)  # nothing measured: nothing recorded
    report = {"available": True, "asr_model": "asr-x", "speaker_model": "spk-y",
              "versions": {"before": {"cer": 0.5, "speaker_similarity": 0.61},
                           "after": {"cer": 0.125, "speaker_similarity": 0.83}}}  # fmt: skip
    quality = record_quality(version, report)
    assert read_metadata(version)["quality"] == quality and quality["character error rate, after"] == 0.125
    assert "| character error rate, after | 0.125 |" in (version / "merged" / "README.md").read_text()
    with tarfile.open(archive) as tar:
        card = tar.extractfile("fi-v2/MODEL_CARD.md").read().decode()
    assert "| speaker similarity, after | 0.83 |" in card and "asr-x" in card


def test_the_family_writes_its_part_of_the_card():
    """What the model is, its licence and how to use it come from the family metadata.json names; a family
    without card text is named, not silently given Fish Speech's licence."""
    fish = {**META, "base_model": {**META["base_model"], "family": "fish_speech"}}
    assert model_card(fish) == model_card(META)  # versions from before the family was recorded are Fish Speech
    with pytest.raises(ValueError, match="unknown model family 'xtts'; tts_lib knows fish_speech, voxcpm"):
        model_card({**META, "base_model": {**META["base_model"], "family": "xtts"}})
