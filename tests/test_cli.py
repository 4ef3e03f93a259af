"""The CLI contract, driven through click's CliRunner."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, fitted_histogram, forged, model_part, random_image
from PIL import Image

from nncompress import files
from nncompress.cli import main
from nncompress.modelfile import save_model

COMMANDS = ["encode", "decode", "info", "models", "score", "sample", "train"]


def run(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def png(path: Path, mode: str = "RGB", size=(21, 13), seed=0) -> Path:
    random_image(mode, *size, seed=seed).save(path)
    return path


def one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    r = run(command, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output and len(r.output.splitlines()) > 4


def test_encode_decode_round_trip_default_names(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    r = run("encode", str(src), "--model", "hist-rgb", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "bits/subpixel" in r.output and "x PNG" in r.output
    nnc = tmp_path / "a.nnc"
    assert nnc.is_file()
    out = tmp_path / "b.png"
    r = run("decode", str(nnc), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(src)))


def test_default_model_by_mode_and_several_inputs_to_folder(tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr("nncompress.zoo.DEFAULTS", {3: ("hist-rgb",), 1: ("hist-grey",)})
    a, b = png(tmp_path / "a.png"), png(tmp_path / "g.png", "L", seed=3)
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert run("encode", str(a), str(b), "-o", str(outdir)).exit_code == 0
    r = run("decode", str(outdir / "a.nnc"), str(outdir / "g.nnc"), "-o", str(outdir))
    assert r.exit_code == 0, r.output
    for src in (a, b):
        dec = Image.open(outdir / src.name)
        assert dec.mode == Image.open(src).mode
        assert np.array_equal(np.asarray(dec), np.asarray(Image.open(src)))


def test_stdin_to_stdout(tmp_path, model_dir):
    buf = io.BytesIO()
    random_image("L", 9, 9).save(buf, format="PNG")
    r = CliRunner().invoke(main, ["encode", "-", "-m", "hist-grey", "-q"], input=buf.getvalue())
    assert r.exit_code == 0
    data = r.stdout_bytes
    assert data[:4] == b"\x89NNC"
    r = CliRunner().invoke(main, ["decode", "-", "-q"], input=data)
    assert r.exit_code == 0
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(r.stdout_bytes))), np.asarray(random_image("L", 9, 9))
    )


def test_nothing_is_overwritten_without_force(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    (tmp_path / "a.nnc").write_bytes(b"precious")
    one_line_error(run("encode", str(src), "-m", "hist-rgb"), "exists (use --force")
    assert (tmp_path / "a.nnc").read_bytes() == b"precious"
    assert run("encode", str(src), "-m", "hist-rgb", "--force").exit_code == 0
    # decoding next to the original does not overwrite a.png: it picks another name
    before = src.read_bytes()
    r = run("decode", str(tmp_path / "a.nnc"))
    assert r.exit_code == 0 and "a.decoded.png" in r.output, r.output
    assert src.read_bytes() == before


def test_bad_inputs_give_one_line_errors(tmp_path, model_dir):
    junk = tmp_path / "junk.nnc"
    junk.write_bytes(b"not an nnc file at all")
    one_line_error(run("decode", str(junk), "-o", str(tmp_path / "x.png")), "bad magic")
    one_line_error(run("info", str(junk)), "bad magic")
    notimg = tmp_path / "x.png"
    notimg.write_bytes(b"hello")
    one_line_error(run("encode", str(notimg), "-m", "hist-rgb"), "not a readable image")
    one_line_error(run("encode", str(tmp_path / "missing.png")), "missing.png")
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (4, 4)).save(cmyk)
    one_line_error(run("encode", str(cmyk), "-m", "hist-rgb"), "unsupported image mode 'CMYK'")
    one_line_error(run("encode", str(png(tmp_path / "c.png")), "-m", "hist-grey"), "1-channel")
    # a grey image through an RGB model is no error: its red channel coded, G = B = R
    grey = png(tmp_path / "g.png", "L")
    r = run("encode", str(grey), "-m", "hist-rgb", "--method", "model")
    assert r.exit_code == 0 and "(model hist-rgb" in r.output, r.output
    assert model_part((tmp_path / "g.nnc").read_bytes())[0].model_name == "hist-rgb"
    assert run("decode", str(tmp_path / "g.nnc"), "-o", str(tmp_path / "g2.png")).exit_code == 0
    assert Image.open(tmp_path / "g2.png").tobytes() == Image.open(grey).tobytes()
    one_line_error(
        run("encode", str(png(tmp_path / "h.png")), "-m", "nope"), "unknown model 'nope'"
    )


def test_truncated_file_and_wrong_model(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    assert run("encode", str(src), "-m", "hist-rgb", "--method", "model").exit_code == 0
    data = (tmp_path / "a.nnc").read_bytes()
    (tmp_path / "t.nnc").write_bytes(data[: len(data) // 2])
    one_line_error(run("decode", str(tmp_path / "t.nnc")), "truncated")
    other = fitted_histogram(3, seed=9)
    save_model(other, model_dir / "other.safetensors", info={"tile": [16, 16]})
    r = run("decode", str(tmp_path / "a.nnc"), "-o", str(tmp_path / "o.png"), "-m", "other")
    one_line_error(r, "was encoded with model 'hist-rgb'")


def test_corrupted_or_foreign_model_file_is_one_line(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    good = (model_dir / "hist-rgb.safetensors").read_bytes()
    bad = bytearray(good)
    bad[-1] ^= 0x01
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    (tmp_path / "foreign.safetensors").write_bytes(b"not a model at all")
    for name, needle in [("bad", "do not match their digest"), ("foreign", "not a readable")]:
        r = run("encode", str(src), "-m", str(tmp_path / f"{name}.safetensors"))
        one_line_error(r, needle)
        assert r.exit_code == 1 and not (tmp_path / "a.nnc").exists()


def test_flipped_payload_bit_is_detected(tmp_path, model_dir):
    src = png(tmp_path / "a.png", size=(40, 30))
    run("encode", str(src), "-m", "hist-rgb")
    data = bytearray((tmp_path / "a.nnc").read_bytes())
    data[-20] ^= 0x10
    (tmp_path / "f.nnc").write_bytes(bytes(data))
    r = run("decode", str(tmp_path / "f.nnc"), "-o", str(tmp_path / "o.png"))
    assert r.exit_code != 0 and ("checksum" in r.output or "corrupt" in r.output), r.output
    assert not (tmp_path / "o.png").exists()


def test_info_and_models(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    assert run("encode", str(src), "-m", "hist-rgb", "--method", "model").exit_code == 0
    r = run("info", str(tmp_path / "a.nnc"))
    assert r.exit_code == 0 and "hist-rgb" in r.output and "21" in r.output
    r = run("info", "--json", str(tmp_path / "a.nnc"))
    (d,) = json.loads(r.output)
    assert (d["format_version"], d["method"], d["mode"], d["bit_depth"]) == (6, "model", "RGB", 8)
    assert (d["width"], d["height"], d["frames"], d["model_name"]) == (21, 13, 1, "hist-rgb")
    assert len(d["model_digest"]) == 64 and d["tile"] == "13x16" and d["metadata"] == []
    assert d["parts"][0].startswith("model all frame 0:") and d["encoder"]
    data = (tmp_path / "a.nnc").read_bytes()
    crc = files.parse(data).header.content_crc32
    assert d["file_bytes"] == len(data) and d["content_crc32"] == f"{crc:08x}"
    assert d["bits_per_subpixel"] == round(8 * len(data) / (21 * 13 * 3), 4)
    # a classical file: its method, no model fields
    assert run("encode", str(src), "-o", str(tmp_path / "p.nnc"), "--method", "png").exit_code == 0
    (p,) = json.loads(run("info", "--json", str(tmp_path / "p.nnc")).output)
    assert p["method"] == "png" and "model_name" not in p and p["width"] == 21
    r = run("models")
    assert r.exit_code == 0 and "hist-rgb" in r.output and "histogram" in r.output
    assert {m["name"] for m in json.loads(run("models", "--json").output)} >= {
        "hist-rgb",
        "hist-grey",
    }


def test_score_json_and_heatmap(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    heat = tmp_path / "heat.png"
    r = run("score", str(src), "-m", "hist-rgb", "--json", "--heatmap", str(heat))
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert rows[0]["path"] == str(src) and 0 < rows[0]["bits_per_subpixel"] < 9
    assert Image.open(heat).size == (21, 13)
    assert (rows[0]["width"], rows[0]["height"], rows[0]["subpixels"]) == (21, 13, 21 * 13 * 3)
    assert rows[0]["model"] == "hist-rgb" and len(rows[0]["tile"]) == 2
    # the score predicts the coded size: same tiles, same model
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "--method", "model")
    assert r.exit_code == 0, r.output
    (info,) = json.loads(run("info", str(tmp_path / "a.nnc"), "--json").output)
    assert "x".join(map(str, rows[0]["tile"])) == info["tile"]


def test_sample_writes_a_grid(tmp_path, model_dir):
    out = tmp_path / "grid.png"
    r = run(
        "sample", "-m", "hist-grey", "-n", "4", "-o", str(out), "--size", "5x6", "--device", "cpu"
    )
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (12, 10)
    one_line_error(run("sample", "-m", "hist-grey", "-o", str(out)), "exists")


def test_a_format_3_file_names_the_release_that_reads_it(tmp_path, model_dir):
    """0.3's float files decode only where they were made: the message says so."""
    src = png(tmp_path / "a.png")
    run("encode", str(src), "-m", "hist-rgb", "--device", "cpu")
    data = bytearray((tmp_path / "a.nnc").read_bytes())
    data[8:10] = (3).to_bytes(2, "little")
    (tmp_path / "old.nnc").write_bytes(bytes(data))
    r = run("decode", str(tmp_path / "old.nnc"), "-o", str(tmp_path / "o.png"))
    one_line_error(r, "nncompress 0.3")
    assert not (tmp_path / "o.png").exists()


def test_max_batch_bounds_the_batch_and_the_file_still_decodes(tmp_path, model_dir):
    src = png(tmp_path / "a.png", size=(40, 24))  # 8x8 tiles: 5 x 3 = 15 tiles
    model = ("-m", "hist-rgb", "--method", "model", "--device", "cpu", "--tile", "8")
    r = run("encode", str(src), *model)
    assert r.exit_code == 0, r.output
    (whole,) = json.loads(run("info", str(tmp_path / "a.nnc"), "--json").output)
    nnc = tmp_path / "b.nnc"
    r = run("encode", str(src), "-o", str(nnc), *model, "--max-batch", "4", "--force")
    assert r.exit_code == 0, r.output
    (small,) = json.loads(run("info", str(nnc), "--json").output)
    assert whole["chunk_tiles"] == 15 and small["chunk_tiles"] == 4
    assert whole["parts"][0].endswith("(1 streams)") and small["parts"][0].endswith("(4 streams)")
    out = tmp_path / "b.png"
    assert run("decode", str(nnc), "-o", str(out)).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(src)))
    bad = run("encode", str(src), "--max-batch", "0", "-f")
    assert bad.exit_code == 2 and "Invalid value for '--max-batch'" in bad.output


@pytest.mark.parametrize(
    "error, shown",
    [
        (MemoryError(), "out of memory while coding (MemoryError)"),
        (
            RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 9e9 bytes."),
            "out of memory while coding ([enforce fail] DefaultCPUAllocator",
        ),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB."),
            "out of memory while coding (CUDA out of memory. Tried to allocate 8.00 GiB.)",
        ),
    ],
)
def test_running_out_of_memory_is_a_user_error_with_advice(
    tmp_path, model_dir, monkeypatch, error, shown
):
    def fail(*args, **kwargs):
        raise error

    src = png(tmp_path / "a.png")
    monkeypatch.setattr("nncompress.api.compress_detailed", fail)
    r = CliRunner().invoke(main, ["encode", str(src), "-m", "hist-rgb", "--device", "cpu"])
    one_line_error(r, shown)
    assert r.exit_code == 1 and "--max-batch" in r.output
    assert not (tmp_path / "a.nnc").exists()


def test_folders_expand_to_the_files_below_them(tmp_path, model_dir):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    a, b = png(photos / "a.png", seed=1), png(photos / "sub" / "b.webp", seed=2)
    (photos / "notes.txt").write_text("not an image")
    r = run("encode", str(photos), "-m", "hist-rgb", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (photos / "a.nnc").is_file() and (photos / "sub" / "b.nnc").is_file()
    assert not (photos / "notes.nnc").exists()
    out = tmp_path / "out"
    out.mkdir()
    r = run("decode", str(photos), "-o", str(out))  # the .nnc files only
    assert r.exit_code == 0, r.output
    for src in (a, b):
        dec = np.asarray(Image.open(out / (src.stem + ".png")))
        assert np.array_equal(dec, np.asarray(Image.open(src).convert("RGB")))
    rows = json.loads(run("score", str(photos), "-m", "hist-rgb", "--json").output)
    assert [row["path"] for row in rows] == [str(a), str(b)]
    heat = tmp_path / "heat"
    heat.mkdir()
    r = run("score", str(photos), "-m", "hist-rgb", "--heatmap", str(heat))
    assert r.exit_code == 0 and sorted(p.name for p in heat.iterdir()) == ["a.png", "b.png"]
    # beside the inputs, a.png exists: a.decoded.png instead; sub/b.png is free
    before = a.read_bytes()
    r = run("decode", str(photos))
    assert r.exit_code == 0, r.output
    assert a.read_bytes() == before
    assert (photos / "a.decoded.png").is_file() and (photos / "sub" / "b.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run("encode", str(empty)), "a folder without images")
    one_line_error(run("decode", str(empty)), "a folder without nncompress files")


def test_score_heatmaps_are_checked_before_any_work(tmp_path, model_dir):
    x1 = tmp_path / "x1"
    x2 = tmp_path / "x2"
    x1.mkdir()
    x2.mkdir()
    a, b = png(x1 / "same.png"), png(x2 / "same.png", seed=4)
    heat = tmp_path / "heat"
    heat.mkdir()
    r = run("score", str(a), str(b), "-m", "hist-rgb", "--heatmap", str(heat))
    one_line_error(r, "the same heatmap")
    r = run("score", str(a), str(b), "-m", "hist-rgb", "--heatmap", str(tmp_path / "nope"))
    one_line_error(r, "give an existing folder")
    (heat / "same.png").write_bytes(b"mine")
    r = run("score", str(a), "-m", "hist-rgb", "--heatmap", str(heat / "same.png"))
    one_line_error(r, "exists")
    assert (heat / "same.png").read_bytes() == b"mine"


# --- Workflow as gzip / cjxl users expect (issue 13) ---------------------------------------


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture
def umask():
    """Set the process umask for a test; restored after."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_mode_a_plain_open_would_give(tmp_path, model_dir, umask, mask, mode):
    src = png(tmp_path / "a.png")
    umask(mask)
    assert run("encode", str(src), "-m", "hist-rgb", "-q").exit_code == 0
    assert stat.S_IMODE((tmp_path / "a.nnc").stat().st_mode) == mode
    assert run("decode", str(tmp_path / "a.nnc"), "-o", str(tmp_path / "b.png")).exit_code == 0
    assert stat.S_IMODE((tmp_path / "b.png").stat().st_mode) == mode
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_force_keeps_the_mode_of_the_file_it_replaces(tmp_path, model_dir, umask):
    src = png(tmp_path / "a.png")
    nnc = tmp_path / "a.nnc"
    nnc.write_bytes(b"old")
    nnc.chmod(0o640)
    assert run("encode", str(src), "-m", "hist-rgb", "--force").exit_code == 0
    assert nnc.read_bytes()[:4] == b"\x89NNC" and stat.S_IMODE(nnc.stat().st_mode) == 0o640


def test_encode_then_decode_in_one_folder_needs_no_force(tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = png(tmp_path / "photo.png")
    original = src.read_bytes()
    assert run("encode", "photo.png", "-m", "hist-rgb").exit_code == 0
    r = run("decode", "photo.nnc")
    assert r.exit_code == 0, r.output
    assert lines(r.output) == ["photo.nnc -> photo.decoded.png (photo.png exists): 21x13 RGB"]
    assert src.read_bytes() == original
    decoded = np.asarray(Image.open("photo.decoded.png"))
    assert np.array_equal(decoded, np.asarray(Image.open(src)))
    r = run("decode", "photo.nnc")  # again: a name that is free, never an overwrite
    assert r.exit_code == 0 and "photo.decoded.2.png" in r.output, r.output
    assert np.array_equal(np.asarray(Image.open("photo.decoded.2.png")), decoded)
    # an explicit -o that exists is refused; --force writes the default name itself
    one_line_error(run("decode", "photo.nnc", "-o", "photo.png"), "photo.png exists")
    assert src.read_bytes() == original
    r = run("decode", "photo.nnc", "--skip-existing")
    assert r.exit_code == 0 and lines(r.output) == ["photo.nnc: skipped, photo.png exists"]
    assert not Path("photo.decoded.3.png").exists()
    assert run("decode", "photo.nnc", "--force", "-q").exit_code == 0
    assert np.array_equal(np.asarray(Image.open(src)), decoded)


def test_decode_fallback_names_never_collide_within_a_run(tmp_path, model_dir):
    """x.nnc falls back to x.decoded.png, the default name of x.decoded.nnc: it moves on."""
    src = png(tmp_path / "x.png")
    assert run("encode", str(src), "-m", "hist-rgb", "-q").exit_code == 0
    (tmp_path / "x.decoded.nnc").write_bytes((tmp_path / "x.nnc").read_bytes())
    r = run("decode", str(tmp_path / "x.nnc"), str(tmp_path / "x.decoded.nnc"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x.decoded.2.png").is_file() and (tmp_path / "x.decoded.png").is_file()


def test_decode_help_states_the_naming_rule():
    r = run("decode", "--help")
    text = " ".join(r.output.split())
    assert "IN.decoded.png" in text and "IN.decoded.2.png" in text and "--force" in text
    assert "--skip-existing" in text and "--max-pixels" in text


def test_many_inputs_go_on_past_an_existing_output(tmp_path, model_dir):
    a, b, c = (png(tmp_path / f"{n}.png", seed=i) for i, n in enumerate("abc"))
    (tmp_path / "b.nnc").write_bytes(b"precious")
    r = run("encode", str(a), str(b), str(c), "-m", "hist-rgb")
    assert r.exit_code == 1, r.output
    assert (tmp_path / "a.nnc").is_file() and (tmp_path / "c.nnc").is_file()
    assert (tmp_path / "b.nnc").read_bytes() == b"precious"
    assert f"Error: {tmp_path / 'b.nnc'} exists (use --force to overwrite)" in lines(r.stderr)
    assert lines(r.stderr)[-1] == "encoded 2, skipped 0, failed 1"
    (tmp_path / "c.nnc").unlink()
    r = run("encode", str(a), str(b), str(c), "-m", "hist-rgb", "--skip-existing")
    assert r.exit_code == 0, r.output
    assert f"{a}: skipped, {tmp_path / 'a.nnc'} exists" in lines(r.stdout)
    assert lines(r.stderr) == ["encoded 1, skipped 2, failed 0"]
    assert (tmp_path / "b.nnc").read_bytes() == b"precious"
    r = run("encode", str(a), str(b), "-m", "hist-rgb", "--skip-existing", "-q")
    assert r.exit_code == 0 and r.output == ""


def test_many_inputs_go_on_past_unreadable_and_oversized_ones(tmp_path, model_dir):
    good = png(tmp_path / "good.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    big = png(tmp_path / "big.png", size=(40, 30))
    r = run("encode", str(tmp_path), "-m", "hist-rgb", "--max-pixels", "1000")
    assert r.exit_code == 1, r.output
    assert (tmp_path / "good.nnc").is_file()
    assert not (tmp_path / "junk.nnc").exists() and not (tmp_path / "big.nnc").exists()
    err = lines(r.stderr)
    assert any(str(big) in ln and "limit of 1,000" in ln for ln in err), err
    assert any("junk.png" in ln and "not a readable image" in ln for ln in err), err
    assert err[-1] == "encoded 1, skipped 0, failed 2"
    assert good.is_file()


def test_decode_many_with_skip_existing(tmp_path, model_dir):
    a, b = png(tmp_path / "a.png", seed=1), png(tmp_path / "b.png", seed=2)
    assert run("encode", str(a), str(b), "-m", "hist-rgb", "-q").exit_code == 0
    b.unlink()
    r = run("decode", str(tmp_path / "a.nnc"), str(tmp_path / "b.nnc"), "--skip-existing")
    assert r.exit_code == 0, r.output
    assert f"{tmp_path / 'a.nnc'}: skipped, {a} exists" in lines(r.stdout)
    assert lines(r.stderr) == ["decoded 1, skipped 1, failed 0"]
    assert b.is_file() and not (tmp_path / "a.decoded.png").exists()


def test_force_and_skip_existing_exclude_each_other(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    for command in ("encode", "decode"):
        r = run(command, str(src), "--force", "--skip-existing")
        assert r.exit_code == 2 and len(lines(r.output)) == 1, r.output
        assert "exclude each other" in r.output


def test_output_paths_are_checked_before_any_work(tmp_path, model_dir, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    src = png(tmp_path / "a.png")
    assert run("encode", str(src), "-m", "hist-rgb", "-q").exit_code == 0
    monkeypatch.setattr("nncompress.api.compress_detailed", no_work)
    monkeypatch.setattr("nncompress.api.decompress_many", no_work)
    monkeypatch.setattr("nncompress.api.load_model", no_work)
    monkeypatch.setattr("nncompress.images.open_image", no_work)
    nodir = tmp_path / "nodir"
    r = run("encode", str(src), "-o", str(nodir / "x.nnc"), "-m", "hist-rgb")
    one_line_error(r, f"-o {nodir / 'x.nnc'}: folder {nodir} does not exist")
    assert r.exit_code == 1
    r = run("decode", str(tmp_path / "a.nnc"), "-o", str(nodir / "x.png"))
    one_line_error(r, "does not exist")
    one_line_error(run("encode", str(src), "-o", f"{nodir}/", "-m", "hist-rgb"), "does not exist")
    (tmp_path / "file").write_text("")
    r = run("encode", str(src), "-o", str(tmp_path / "file" / "x.nnc"), "-m", "hist-rgb")
    one_line_error(r, "is not a folder")
    r = run("sample", "-m", "hist-grey", "-o", str(nodir / "g.png"))
    one_line_error(r, "does not exist")
    r = run("score", str(src), "-m", "hist-rgb", "--heatmap", str(nodir / "h.png"))
    one_line_error(r, "does not exist")
    assert not nodir.exists()


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, model_dir, monkeypatch):
    """os.access is what decides (root may write anywhere, so it is faked here)."""
    src = png(tmp_path / "a.png")
    out = tmp_path / "ro"
    out.mkdir()
    monkeypatch.setattr("nncompress.cli.os.access", lambda path, mode: Path(path) != out)
    monkeypatch.setattr("nncompress.api.compress_detailed", lambda *a, **k: 1 / 0)
    r = run("encode", str(src), "-o", str(out / "a.nnc"), "-m", "hist-rgb")
    one_line_error(r, f"folder {out} is not writable")
    r = run("encode", str(src), str(png(tmp_path / "b.png")), "-o", str(out), "-m", "hist-rgb")
    one_line_error(r, f"-o {out}: folder {out} is not writable")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["encode", "--bogus", "x.png"], "No such option '--bogus'"),
        (["encode"], "Missing argument 'IN...'"),
        (["decode", "--device", "gpu", "x.nnc"], "Invalid value for '--device'"),
        (["encode", "x.png", "--max-batch", "0"], "Invalid value for '--max-batch'"),
        (["encode", "x.png", "--max-pixels", "lots"], "Invalid value for '--max-pixels'"),
        (["bogus"], "No such command 'bogus'"),
        (["--bogus"], "No such option '--bogus'"),
        (["info"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line_with_exit_status_2(args, needle):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert len(lines(r.output)) == 1 and lines(r.output)[0].startswith("Error: "), r.output
    assert needle in r.output and "--help" in r.output and "Usage:" not in r.output


def test_help_is_unchanged_by_the_one_line_errors():
    r = run("encode", "--help")
    assert r.exit_code == 0 and r.output.startswith("Usage: main encode [OPTIONS] IN...")
    assert "--skip-existing" in r.output and "--max-pixels" in r.output
    r = CliRunner().invoke(main, [])  # the group alone shows its help, as click does
    assert "Usage:" in r.output and "Commands:" in r.output


def test_info_into_a_closed_pipe_is_quiet(tmp_path, model_dir):
    """`nncompress info x.nnc | head -1`: no 'Broken pipe' message, no traceback."""
    src = png(tmp_path / "a.png")
    assert run("encode", str(src), "-m", "hist-rgb", "-q").exit_code == 0
    read, write = os.pipe()
    os.close(read)  # closed before the first write: every write meets EPIPE
    try:
        r = subprocess.run(
            [sys.executable, "-m", "nncompress", "info", str(tmp_path / "a.nnc")],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.close(write)
    assert r.stderr == "" and r.returncode != 0


def test_a_slow_cpu_run_prints_its_estimate_first(tmp_path, model_dir, monkeypatch):
    src = png(tmp_path / "a.png")  # 273 pixels
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu")
    assert r.exit_code == 0 and r.stderr == "", r.stderr  # a fast run says nothing
    monkeypatch.setattr("nncompress.cli.CPU_SECONDS_PER_MEGAPIXEL", {"hist-rgb": 4e8})
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "-f")
    assert r.exit_code == 0, r.output
    (line,) = lines(r.stderr)  # 4e8 s/MP * 273e-6 MP = 109,200 s
    assert line.startswith("nncompress: encoding 0.00 MP with hist-rgb on the CPU")
    assert "about 30.3 h" in line and "GPU" in line
    assert "if the model wins over the classical codecs" in line  # method auto
    # decoding: only files with a model part cost the model's time
    assert files.parse((tmp_path / "a.nnc").read_bytes()).header.method_summary() != "model"
    r = run("decode", str(tmp_path / "a.nnc"), "-o", str(tmp_path / "b.png"))
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "-f", "--method", "model")
    (line,) = lines(r.stderr)
    assert line.startswith("nncompress: encoding 0.00 MP with hist-rgb") and "wins" not in line
    r = run("decode", str(tmp_path / "a.nnc"), "-o", str(tmp_path / "c.png"))
    assert r.exit_code == 0 and "decoding 0.00 MP with hist-rgb" in r.stderr, r.stderr
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "-f", "--method", "png")
    assert r.exit_code == 0 and r.stderr == "", r.stderr  # no model: no estimate
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "-f", "-q")
    assert r.exit_code == 0 and r.output == ""


def test_the_estimate_comes_from_the_model_file_else_its_parameter_count(
    tmp_path, model_dir, monkeypatch
):
    from nncompress.modelfile import load_model_file

    src = png(tmp_path / "a.png")
    fixture = load_model_file(model_dir / "hist-rgb.safetensors").model  # hist-rgb, other info
    info = {"tile": [16, 16], "cpu_seconds_per_megapixel": 2e8}
    save_model(fixture, model_dir / "timed.safetensors", info=info)
    r = run("encode", str(src), "-m", "timed", "--device", "cpu")
    assert "about 15.2 h" in r.stderr, r.stderr  # 2e8 * 273e-6 = 54,600 s
    # hist-rgb: no timing anywhere; 3 * 256 counts = 768 parameters
    monkeypatch.setattr("nncompress.cli.CPU_SECONDS_PER_MEGAPIXEL_PER_MILLION_PARAMS", 1e11)
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "-f", "--method", "model")
    assert "encoding 0.00 MP with hist-rgb" in r.stderr, r.stderr
    r = run("decode", str(tmp_path / "a.nnc"), "-o", str(tmp_path / "b.png"))  # by name
    assert "decoding 0.00 MP with hist-rgb" in r.stderr, r.stderr
    monkeypatch.setattr("nncompress.cli.CPU_SECONDS_PER_MEGAPIXEL_PER_MILLION_PARAMS", 1.0)
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "-f")
    assert r.stderr == "", r.stderr


def test_cpu_rate_constants_match_the_measurements():
    from nncompress import cli

    crop_mp = 768 * 512 / 1e6
    assert cli.CPU_SECONDS_PER_MEGAPIXEL["pixelcnnpp-photo-small"] * crop_mp == pytest.approx(
        21.9, rel=0.05
    )
    assert cli.CPU_SECONDS_PER_MEGAPIXEL["pixelcnnpp-photo"] * crop_mp == pytest.approx(
        90.3, rel=0.05
    )
    # the integer models (what codes files): 768x512 with -small-int took 33.7-34.2 s
    assert cli.CPU_SECONDS_PER_MEGAPIXEL["pixelcnnpp-photo-small-int"] * crop_mp == pytest.approx(
        34.0, rel=0.05
    )
    # an unknown model of pixelcnnpp-photo-int's size (state-dict elements) lands near it
    guess = cli.cpu_seconds_per_megapixel("mine", {}, 7_337_194)
    assert guess == pytest.approx(cli.CPU_SECONDS_PER_MEGAPIXEL["pixelcnnpp-photo-int"], rel=0.1)
    assert cli.cpu_seconds_per_megapixel("x", {"cpu_seconds_per_megapixel": 5}, 10**9) == 5


def test_max_pixels_refuses_large_images_before_reading_them(tmp_path, model_dir, monkeypatch):
    src = png(tmp_path / "a.png")  # 21x13 = 273 pixels
    monkeypatch.setattr("nncompress.api.compress_detailed", lambda *a, **k: 1 / 0)
    r = run("encode", str(src), "-m", "hist-rgb", "--max-pixels", "272")
    one_line_error(r, "image 21x13 has 273 pixels, more than the limit of 272")
    assert "(raise it with --max-pixels)" in r.output and r.exit_code == 1
    assert run("encode", "--max-pixels", "0", str(src)).exit_code == 2


@pytest.mark.parametrize("method", ["model", "auto"])
def test_max_pixels_on_decode_reads_the_header_first(tmp_path, model_dir, monkeypatch, method):
    src = png(tmp_path / "a.png")
    assert run("encode", str(src), "-m", "hist-rgb", "--method", method, "-q").exit_code == 0
    data = (tmp_path / "a.nnc").read_bytes()
    (tmp_path / "big.nnc").write_bytes(forged(data, width=10000, height=9000))  # 90,000,000 px
    monkeypatch.setattr("nncompress.api.decompress_detailed", lambda *a, **k: 1 / 0)
    monkeypatch.setattr("nncompress.api.decompress_many", lambda *a, **k: 1 / 0)
    r = run("decode", str(tmp_path / "big.nnc"), "-o", str(tmp_path / "big.png"))
    one_line_error(r, "image 10000x9000 has 90,000,000 pixels, more than the limit of 89,478,485")
    assert "--max-pixels" in r.output and not (tmp_path / "big.png").exists()
    r = run("decode", str(tmp_path / "a.nnc"), "-o", str(tmp_path / "b.png"), "--max-pixels", "9")
    one_line_error(r, "more than the limit of 9 (raise it with --max-pixels)")


def test_encode_verify_decodes_what_it_wrote(tmp_path, model_dir, monkeypatch):
    src = png(tmp_path / "a.png")
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "--verify")
    assert r.exit_code == 0, r.output
    # A decoder that returns other pixels makes --verify fail, and nothing is written.
    import dataclasses

    from nncompress import api

    real = api.decode_files

    def wrong(*a, **k):  # mirrored pixels
        out = real(*a, **k)
        for d in out:
            frames = tuple(f[:, ::-1] for f in d.content.frames)
            d.content = dataclasses.replace(d.content, frames=frames)
        return out

    monkeypatch.setattr(api, "decode_files", wrong)
    for method in ("auto", "model"):
        out = tmp_path / f"v-{method}.nnc"
        args = ("-o", str(out), "-m", "hist-rgb", "--method", method, "--verify")
        r = run("encode", str(src), *args)
        one_line_error(r, "verification failed")
        assert not out.exists()


def test_decode_with_any_max_batch(tmp_path, model_dir):
    src = png(tmp_path / "a.png", size=(40, 24))
    r = run("encode", str(src), "-m", "hist-rgb", "--tile", "8", "--method", "model", "-q")
    assert r.exit_code == 0
    for n in ("1", "7"):
        out = tmp_path / f"d{n}.png"
        r = run("decode", str(tmp_path / "a.nnc"), "-o", str(out), "--max-batch", n)
        assert r.exit_code == 0, r.output
        assert Image.open(out).tobytes() == Image.open(src).tobytes()


def test_quantize_makes_a_float_model_code(tmp_path, model_dir):
    from conftest import fitted_histogram

    from nncompress.modelfile import save_model

    flt = tmp_path / "hflt.safetensors"
    save_model(fitted_histogram(3), flt, info={"tile": [8, 8]})
    src = png(tmp_path / "a.png")
    one_line_error(run("encode", str(src), "-m", str(flt)), "float arithmetic")
    r = run("quantize", str(flt))
    assert r.exit_code == 0, r.output
    q = tmp_path / "hflt-int.safetensors"
    assert q.is_file() and "hflt-int.safetensors" in r.output
    one_line_error(run("quantize", str(flt)), "exists")
    assert run("encode", str(src), "-m", str(q), "--method", "model", "-q").exit_code == 0
    r = run("decode", str(tmp_path / "a.nnc"), "-m", str(q), "-o", str(tmp_path / "b.png"))
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "b.png").tobytes() == Image.open(src).tobytes()
    one_line_error(run("quantize", str(q)), "already an integer model")


def test_info_check_tells_intact_from_damaged_files_without_decoding(
    tmp_path, model_dir, monkeypatch
):
    src = png(tmp_path / "a.png")
    good = tmp_path / "a.nnc"
    assert run("encode", str(src), "-m", "hist-rgb", "--method", "model").exit_code == 0
    data = bytearray(good.read_bytes())
    data[-3] ^= 0x10  # inside the model part's coder stream
    bad = tmp_path / "b.nnc"
    bad.write_bytes(bytes(data))

    def no_decoding(*args, **kwargs):
        raise AssertionError("info --check decoded")

    monkeypatch.setattr("nncompress.files.decode_files", no_decoding)
    r = run("info", "--check", str(good))
    assert (
        r.exit_code == 0
        and r.output.strip() == f"{good}: intact (header and parts match their CRC-32s)"
    )
    r = CliRunner().invoke(main, ["info", "--check", str(good), str(bad)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 3, r.output
    assert lines[0].endswith("intact (header and parts match their CRC-32s)")
    assert lines[1].startswith(f"{bad}: damaged: ") and "checksum" in lines[1]
    assert "1 of 2 files damaged" in lines[2]


def test_info_does_not_import_torch(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    assert run("encode", str(src), "-m", "hist-rgb", "--method", "model").exit_code == 0
    code = (
        "import sys; from nncompress.cli import main\n"
        "try:\n    main(['info', '--check', sys.argv[1]])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "main_args = ['info', sys.argv[1]]\n"
        "try:\n    main(main_args)\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a.nnc")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
