"""Fuzzing, CI-sized: a few thousand mutated .nnc files and model files, each run in a
worker process (benchmarks/fuzz.py) under an alarm and an address-space limit. Every case
must end in a typed error (nncompress.errors) or the original pixels exactly (a model file:
ModelFileError or a model that works); never other pixels, another exception, a hang or a
dead process. Seeds: small images encoded with the tests' tiny models.

A mutation kind that finds an open bug outside the model-file code goes in KNOWN_BUGS
(xfail, strict=False, with the bug), so the rest stays guarded and the owners see it turn
green; `python benchmarks/fuzz.py --kinds KIND` reproduces one."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fitted_histogram, tiny_pixelcnn

from benchmarks import fuzz
from nncompress.models import build_model

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the harness uses setitimer, RLIMIT_AS, /proc"
)

SEED = 14  # the number: any fixed seed keeps CI reproducible
TIMEOUT_S = 3.0  # per case; a seed decodes in ~5 ms (histograms), ~50 ms (tiny PixelCNN++)
MEM_MB = 1024

#: Cases per mutation kind (about 3000 in all).
NNC_CASES = {
    "bitflip": 250,
    "overwrite": 250,
    "truncate": 200,
    "extend": 150,
    "garbage": 300,
    "payload": 200,
    "header-crc": 250,
    "field": 250,
    "field-huge": 150,
    "swap-dims": 60,
    "swap-fields": 150,
    "cross": 150,
    "stream": 200,
}
MODEL_CASES = {
    "model-bytes": 150,
    "model-config": 150,
    "model-family": 40,
    "model-info": 100,
    "model-info-bigtile": 40,
    "model-tensor": 150,
}

#: kind -> the open bug it finds (not in the model-file code): xfail, not hidden. None now;
#: fixed since the fuzzer found them, and guarded: "swap-dims" (format 3 decoded a header
#: with width and height swapped silently to the transposed shape), "field-huge" (a header's
#: cpu_threads near 256 killed the process through libgomp; a claimed 4095-row tile on a 2x3
#: image took millions of steps), "model-info-bigtile" (a model's default tile of 4096x4096
#: made a 4x4 image take 16M steps and GBs): format 4 and f2c9dbe.
KNOWN_BUGS: dict[str, str] = {}


MADE_4X4 = {
    "channels": 1,
    "height": 4,
    "width": 4,
    "hidden": [12],
    "features": 2,
    "num_masks": 1,
    "first_order": "random",
    "seed": 3,
    "dropout": 0.0,
}


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fuzz.Fuzz]:
    models = {
        "hist-rgb": fuzz.TinyModel(fitted_histogram(3), {"tile": [4, 4]}),
        "hist-grey": fuzz.TinyModel(fitted_histogram(1, seed=1), {"tile": [4, 8]}),
        "pcnn-rgb": fuzz.TinyModel(tiny_pixelcnn(3), {"tile": [4, 4]}, max_side=4),
        "pcnn-grey": fuzz.TinyModel(tiny_pixelcnn(1, seed=1), {"tile": [2, 4]}, max_side=4),
        "made-grey": fuzz.TinyModel(build_model("made", dict(MADE_4X4)), {}),
    }
    with fuzz.Fuzz(tmp_path_factory.mktemp("fuzz"), models, 2, TIMEOUT_S, MEM_MB) as f:
        yield f


def _kind_param(kind: str) -> object:
    if kind in KNOWN_BUGS:
        return pytest.param(kind, marks=pytest.mark.xfail(strict=False, reason=KNOWN_BUGS[kind]))
    return kind


def _report(results: list[fuzz.Result]) -> str:
    rows = fuzz.bad_cases(results)
    return "\n".join(
        f"{r['outcome']}: {r['seed']}: {r['mutation']} -> {r['detail']}" for r in rows[:20]
    )


def _check(results: list[fuzz.Result], wanted: int) -> None:
    assert len(results) >= wanted * 0.9, "too few cases could be made"
    bad = [r for r in results if r.outcome in fuzz.BAD]
    assert not bad, f"{len(bad)} of {len(results)} cases bad:\n{_report(results)}"


def test_seeds_cover_modes_models_and_sizes(fz: fuzz.Fuzz) -> None:
    names = [s.name for s in fz.seeds]
    assert len(names) >= 40
    for part in ("/L-", "/LA-", "/RGB-", "/RGBA-", "/P-", "-1x1", "-32x32"):
        assert any(part in n for n in names), part
    # every model that can encode in this build (one that codes integer models only
    # converts the float ones it can: MADE then has no seeds, only model-file cases)
    assert {"hist-rgb", "hist-grey", "pcnn-rgb", "pcnn-grey"} <= set(fz.codable)
    for model in fz.codable:
        assert any(n.startswith(model + "/") for n in names), model
    assert {s.name.split(" ")[0] for s in fz.model_seeds} == set(fz.models)
    # model seeds have a model part (LA / RGBA: and a classical alpha part); the classical
    # methods have seeds of their own
    from nncompress import classical, files

    for s in fz.seeds:
        methods = [p.method for p in files.parse(s.data).header.parts]
        if s.name.split("/")[0] in fz.codable:
            assert methods[0] == "model", s.name
            assert len(methods) == (2 if "/LA-" in s.name or "/RGBA-" in s.name else 1), s.name
        else:
            # a palette seed: its palette part follows the pixels
            extra = ["palette"] if "/P-" in s.name else []
            assert methods == [s.name.split("/")[0], *extra], s.name
    for method in classical.METHODS:
        assert any(n.startswith(method + "/") for n in names), method


@pytest.mark.parametrize("kind", [_kind_param(k) for k in NNC_CASES])
def test_mutated_nnc_files(fz: fuzz.Fuzz, kind: str) -> None:
    results = fz.run(fz.nnc_cases(NNC_CASES[kind], SEED, [kind]))
    _check(results, NNC_CASES[kind])


@pytest.mark.parametrize("kind", [_kind_param(k) for k in MODEL_CASES])
def test_mutated_model_files(fz: fuzz.Fuzz, kind: str) -> None:
    results = fz.run(fz.model_cases(MODEL_CASES[kind], SEED, [kind]))
    _check(results, MODEL_CASES[kind])


def test_the_harness_catches_each_bad_outcome(fz: fuzz.Fuzz) -> None:
    """Each way a case can go wrong is reported as such, and the pool goes on afterwards."""
    seed = fz.seeds[0]
    cases = [
        fuzz.Case(0, "selftest", "selftest", "-", what, b"")
        for what in ("sleep", "exit", "allocate", "raise")
    ]
    other = (seed.expected[0], seed.expected[1], bytes(len(seed.expected[2])))
    cases.append(fuzz.Case(1, "selftest", "nnc", seed.name, "other pixels", seed.data, other))
    cases.append(fuzz.Case(2, "selftest", "nnc", seed.name, "as is", seed.data, seed.expected))
    got = {r.case.desc: r.outcome for r in fz.run(cases)}
    assert got == {
        "sleep": "hang",
        "exit": "death",
        "allocate": "memory",
        "raise": "untyped",
        "other pixels": "wrong",
        "as is": "exact",
    }


def test_a_worker_that_ignores_the_alarm_is_killed(tmp_path: Path, fz: fuzz.Fuzz) -> None:
    pool = fuzz.Pool(tmp_path, workers=1, timeout_s=0.2, mem_mb=0, grace_s=0.5)
    with pool:
        case = fuzz.Case(0, "selftest", "selftest", "-", "ignore-alarm", b"")
        (r,) = pool.run([case])
        assert r.outcome == "hang" and "killed" in r.detail
        (r,) = pool.run([fuzz.Case(1, "selftest", "selftest", "-", "nothing", b"")])
        assert r.outcome == "exact"


def test_cases_are_reproducible(fz: fuzz.Fuzz) -> None:
    a = fz.nnc_cases(24, SEED)
    b = fz.nnc_cases(24, SEED)
    assert [(c.kind, c.seed, c.desc, c.data) for c in a] == [
        (c.kind, c.seed, c.desc, c.data) for c in b
    ]
    assert {c.kind for c in a} == set(fuzz.NNC_KINDS)
    assert [c.data for c in fz.nnc_cases(24, SEED + 1)] != [c.data for c in a]


def test_a_forged_integer_shift_is_a_typed_error(tmp_path: Path) -> None:
    convert = pytest.importorskip("nncompress.quant.convert")
    import json

    from safetensors.torch import save_file

    from nncompress import api
    from nncompress.errors import NncError
    from nncompress.modelfile import MODEL_FILE_FORMAT, export_tensors, weights_digest

    model = convert.to_integer(tiny_pixelcnn(1, seed=1))
    tensors, config = export_tensors(model), model.config_dict()
    tensors["up_ul.0.0.nin.shift"] = tensors["up_ul.0.0.nin.shift"].clone()
    tensors["up_ul.0.0.nin.shift"][1] = -(2**31)
    meta = {
        "nncompress.format": MODEL_FILE_FORMAT,
        "nncompress.family": model.family,
        "nncompress.config": json.dumps(config, sort_keys=True, separators=(",", ":")),
        "nncompress.digest": weights_digest(model.family, config, tensors).hex(),
        "nncompress.info": "{}",
    }
    path = tmp_path / "forged.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(NncError):
        lm = api.load_model(path)
        api.compress(fuzz.seed_image("L", 4, 4, 7), model=lm, tile=(4, 4), method="model")


def test_a_stream_shorter_than_its_symbols_stops_the_decoder_early(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crafted file whose coder streams are one word each (framing and every CRC valid)
    is refused as soon as the decoder has decoded more than codec.TAIL_BITS past the end of
    a stream, not after decoding the claimed image from padding."""
    import dataclasses

    from conftest import model_part, random_image

    from nncompress import api, codec, files
    from nncompress.container import file as fmt
    from nncompress.container import format as v4
    from nncompress.errors import FormatError

    data = api.compress(random_image("RGB", 96, 96, 3), model="hist-rgb", method="model")
    mh, payload = model_part(data)
    streams = v4.split_streams(mh, payload)
    f = files.parse(data)
    (i,) = [k for k, e in enumerate(f.header.parts) if e.method == "model"]
    mp = fmt.ModelPart(
        mh.model_name,
        mh.model_digest,
        mh.tile_h,
        mh.tile_w,
        mh.chunk_tiles,
        v4.join_streams([s[:4] for s in streams]),
    )
    part = fmt.pack_model_part(mp)
    parts = list(f.data)
    parts[i] = part
    crc = 0
    for b in parts:
        crc = zlib.crc32(b, crc)
    entries = list(f.header.parts)
    entries[i] = dataclasses.replace(entries[i], length=len(part))
    header = dataclasses.replace(f.header, parts=tuple(entries), parts_crc32=crc)
    bad = fmt.pack(fmt.File(header, tuple(parts)))

    calls = []
    real = codec.Decoder.decode
    monkeypatch.setattr(codec.Decoder, "decode", lambda self, p: calls.append(1) or real(self, p))
    api.decompress(data)  # the intact file decodes: every step of the schedule
    steps = len(calls)
    calls.clear()
    with pytest.raises(FormatError, match="ends before its symbols"):
        api.decompress(bad)
    assert 0 < len(calls) < steps / 4, (len(calls), steps)


def test_workers_are_recycled_and_a_dead_idle_worker_loses_no_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that died between cases gets its next case resent to a fresh worker (not
    recorded as that case's death), and workers are replaced every CASES_PER_WORKER cases."""
    monkeypatch.setattr(fuzz, "CASES_PER_WORKER", 3)
    pool = fuzz.Pool(tmp_path, workers=1, timeout_s=2, mem_mb=0)
    with pool:
        cases = [fuzz.Case(i, "selftest", "selftest", "-", "nothing", b"") for i in range(7)]
        first = pool.slots[0].process
        results = pool.run(cases[:4])
        assert [r.outcome for r in results] == ["exact"] * 4
        assert pool.slots[0].process is not first and pool.slots[0].done == 1
        pool.slots[0].process.kill()  # dies while idle
        pool.slots[0].process.join(5)
        results = pool.run(cases[4:])
        assert [r.outcome for r in results] == ["exact"] * 3
