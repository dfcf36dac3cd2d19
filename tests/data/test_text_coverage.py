from tts_lib.data.text_coverage import coverage_by_script, script_of, script_runs


class CharEncoder:
    """One token per UTF-8 byte: the worst case of a byte-level BPE."""

    def encode(self, text):
        return list(text.encode())


def test_script_of():
    assert script_of("ä") == "LATIN" and script_of("ሰ") == "ETHIOPIC" and script_of("ж") == "CYRILLIC"
    assert script_of("1") is None and script_of(" ") is None and script_of(",") is None


def test_runs_split_on_script_and_non_letters():
    runs = list(script_runs("Kiitos, ሰላም!x\u0301y 42"))
    assert runs == [("LATIN", "Kiitos"), ("ETHIOPIC", "ሰላም"), ("LATIN", "x\u0301y")]


def test_bytes_per_character_by_script():
    rows = coverage_by_script(["aa ä", "ሰላም"], CharEncoder())
    by = {r.script: r for r in rows}
    assert by["ETHIOPIC"].characters == 3 and by["ETHIOPIC"].tokens_per_char == 3.0
    assert by["LATIN"].characters == 3 and by["LATIN"].tokens == 4  # ä is 2 bytes
    assert rows[0].script in {"LATIN", "ETHIOPIC"}
