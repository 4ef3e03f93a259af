"""The CLI contract, driven through click's CliRunner."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import fitted_histogram, random_image
from PIL import Image

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
    # decoding next to the original would overwrite a.png
    one_line_error(run("decode", str(tmp_path / "a.nnc")), "a.png exists")


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
    one_line_error(run("encode", str(png(tmp_path / "g.png", "L")), "-m", "hist-rgb"), "3-channel")
    one_line_error(
        run("encode", str(png(tmp_path / "h.png")), "-m", "nope"), "unknown model 'nope'"
    )


def test_truncated_file_and_wrong_model(tmp_path, model_dir):
    src = png(tmp_path / "a.png")
    run("encode", str(src), "-m", "hist-rgb")
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
    run("encode", str(src), "-m", "hist-rgb")
    r = run("info", str(tmp_path / "a.nnc"))
    assert r.exit_code == 0 and "hist-rgb" in r.output and "21" in r.output
    r = run("info", "--json", str(tmp_path / "a.nnc"))
    assert json.loads(r.output)[0]["width"] == 21
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
    assert run("encode", str(src), "-m", "hist-rgb", "--device", "cpu").exit_code == 0
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


def test_file_encoded_on_another_device_kind_is_refused(tmp_path, model_dir):
    """A file from a CUDA encoder must not be decoded on CPU (float results differ)."""
    import dataclasses

    from nncompress import container

    src = png(tmp_path / "a.png")
    run("encode", str(src), "-m", "hist-rgb", "--device", "cpu")
    header, payload = container.unpack((tmp_path / "a.nnc").read_bytes())
    cuda = dataclasses.replace(header, device="cuda", cpu_threads=0)
    (tmp_path / "g.nnc").write_bytes(container.pack(cuda, payload))
    r = run("decode", str(tmp_path / "g.nnc"), "-o", str(tmp_path / "o.png"), "--device", "cpu")
    one_line_error(r, "encoded on cuda")
    assert not (tmp_path / "o.png").exists()


def test_max_batch_bounds_the_batch_and_the_file_still_decodes(tmp_path, model_dir):
    src = png(tmp_path / "a.png", size=(40, 24))  # 8x8 tiles: 5 x 3 = 15 tiles
    r = run("encode", str(src), "-m", "hist-rgb", "--device", "cpu", "--tile", "8")
    assert r.exit_code == 0, r.output
    (whole,) = json.loads(run("info", str(tmp_path / "a.nnc"), "--json").output)
    nnc = tmp_path / "b.nnc"
    r = run(
        "encode", str(src), "-o", str(nnc), "-m", "hist-rgb", "--device", "cpu",
        "--tile", "8", "--max-batch", "4", "--force",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    (small,) = json.loads(run("info", str(nnc), "--json").output)
    assert whole["batch_slots"] == 15 and small["batch_slots"] == 4
    out = tmp_path / "b.png"
    assert run("decode", str(nnc), "-o", str(out)).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(src)))
    bad = run("encode", str(src), "--max-batch", "0", "-f")
    assert bad.exit_code == 2 and "Invalid value for '--max-batch'" in bad.output


@pytest.mark.parametrize(
    "error, shown",
    [
        (MemoryError(), "out of memory (MemoryError)"),
        (
            RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 9e9 bytes."),
            "out of memory ([enforce fail] DefaultCPUAllocator",
        ),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB."),
            "out of memory (CUDA out of memory. Tried to allocate 8.00 GiB.)",
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
    # beside the inputs, decoding would overwrite a.png: refused, nothing written
    one_line_error(run("decode", str(photos)), "exists")
    rows = json.loads(run("score", str(photos), "-m", "hist-rgb", "--json").output)
    assert [row["path"] for row in rows] == [str(a), str(b)]
    heat = tmp_path / "heat"
    heat.mkdir()
    r = run("score", str(photos), "-m", "hist-rgb", "--heatmap", str(heat))
    assert r.exit_code == 0 and sorted(p.name for p in heat.iterdir()) == ["a.png", "b.png"]
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
