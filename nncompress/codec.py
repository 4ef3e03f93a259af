"""The one step loop shared by encoding, decoding and sampling.

Exactness rule (see FORMAT.md): the encoder must obtain every coding table from exactly the
computation the decoder will run. So there is one loop, ``run_schedule``, parameterised only
by where the next symbols come from — the image (encoding), the range decoder (decoding) or
a random generator (sampling). With an integer model a tile's tables depend only on the
model and the tile's own pixels, not on device, threads or batch-mates.

Schedule: each image is cut into tiles of ``tile_h x tile_w`` (edge tiles padded), and its
tiles into *chunks* of consecutive tiles, each chunk one job with its own coder stream (the
stream's symbols come step by step, channel by channel, tile by tile within the chunk, so a
chunk's tiles advance together). Batches are packs of whole chunks, of any images, in any
combination: every tile in a batch advances one pixel per step, in the stepper's order.
Padding positions are never coded: their values are derived from decoded neighbours
(stepper.padding) identically on both sides.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .coding import FREQ_TOTAL, Decoder, Encoder
from .distributions.base import NUM_SYMBOLS, Distribution
from .errors import FormatError
from .models.base import LikelihoodModel, Stepper, StepRunner
from .runtime import step_runner

ProgressFn = Callable[[int], None]  # called with the number of steps just done


@dataclass(frozen=True)
class TileGrid:
    """How one image of ``height x width`` is cut into tiles (raster order of tiles)."""

    height: int
    width: int
    tile_h: int
    tile_w: int

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile_h)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.tile_w)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def extents(self) -> np.ndarray:
        """(count, 2) int64: the valid (height, width) of each tile."""
        hs = np.minimum(self.tile_h, self.height - np.arange(self.rows) * self.tile_h)
        ws = np.minimum(self.tile_w, self.width - np.arange(self.cols) * self.tile_w)
        return np.stack(np.broadcast_arrays(hs[:, None], ws[None, :]), axis=-1).reshape(-1, 2)

    def split(self, planes: np.ndarray, padding: str = "edge") -> np.ndarray:
        """planes: (C, H, W) uint8 -> (count, C, tile_h, tile_w) uint8, padded the way the
        step loop pads (``"edge"`` replicate or ``"zero"``)."""
        c = planes.shape[0]
        ph, pw = self.rows * self.tile_h - self.height, self.cols * self.tile_w - self.width
        mode = "edge" if padding == "edge" else "constant"
        full = np.pad(planes, ((0, 0), (0, ph), (0, pw)), mode=mode)
        t = full.reshape(c, self.rows, self.tile_h, self.cols, self.tile_w)
        return np.ascontiguousarray(
            t.transpose(1, 3, 0, 2, 4).reshape(-1, c, self.tile_h, self.tile_w)
        )

    def join(self, tiles: np.ndarray) -> np.ndarray:
        """(count, C, tile_h, tile_w) -> (C, H, W), dropping padding."""
        c = tiles.shape[1]
        t = tiles.reshape(self.rows, self.cols, c, self.tile_h, self.tile_w)
        full = t.transpose(2, 0, 3, 1, 4).reshape(
            c, self.rows * self.tile_h, self.cols * self.tile_w
        )
        return np.ascontiguousarray(full[:, : self.height, : self.width])


class TileJob(abc.ABC):
    """A chunk of one image's tiles (``tiles`` of ``grid``, consecutive in raster order of
    tiles), coded as one stream: where its symbols come from or go to."""

    def __init__(self, grid: TileGrid, tiles: range | None = None) -> None:
        self.grid = grid
        self.span = tiles if tiles is not None else range(grid.count)
        self.count = len(self.span)
        self.extents = grid.extents()[self.span.start : self.span.stop]
        self.tiles: np.ndarray | None = None  # (count, C, th, tw) after the schedule ran
        # -log2 of the coding probabilities of the symbols, summed: when encoding and
        # sampling (a decoder has no use for it, and it cost ~5% of a decode on CUDA).
        self.info_bits = 0.0
        #: Whether the tables are integer (quant.distributions: frequency g + 1 of
        #: FREQ_TOTAL) rather than float PMFs; set by run_schedule from the distribution.
        self.integer = False

    @abc.abstractmethod
    def exchange(self, tiles: np.ndarray, y: int, x: int, c: int, probs: np.ndarray) -> np.ndarray:
        """tiles: (n,) indices of this job's tiles that have a pixel at (y, x);
        probs: (n, 256) PMFs of channel c there (float32 values, in float32 or float64).
        Returns (n,) int64 symbols."""

    def _account(self, probs: np.ndarray, symbols: np.ndarray) -> None:
        p = probs[np.arange(len(symbols)), symbols].astype(np.float64, copy=False)
        if self.integer:
            p = (p + 1.0) / FREQ_TOTAL
        self.info_bits -= float(np.log2(p).sum())


class EncodeJob(TileJob):
    """Symbols come from the image's tiles ``source`` (count, C, th, tw): TileGrid.split of
    the chunk; they are range-coded into ``encoder``."""

    def __init__(self, grid: TileGrid, tiles: range, source: np.ndarray) -> None:
        super().__init__(grid, tiles)
        self.source = source
        self.encoder = Encoder()
        self.stream: bytes | None = None  # set by finish() (or by a worker that coded it)

    def finish(self) -> bytes:
        """The chunk's coder stream, once all its symbols are coded."""
        if self.stream is None:
            self.stream = self.encoder.finish()
        return self.stream

    def exchange(self, tiles: np.ndarray, y: int, x: int, c: int, probs: np.ndarray) -> np.ndarray:
        symbols = self.source[tiles, c, y, x].astype(np.int64)
        self.encoder.encode(symbols, probs)
        self._account(probs, symbols)
        return symbols


#: Information (bits) a decoder may still take from a stream after its last word has been
#: read into the coder's state. A valid stream needs at most the state's 64 bits plus one
#: word of refill (measured worst over 6,000 random streams: 56 bits); more means the
#: decoder is reading past the end of its payload, which only a damaged or forged file makes
#: it do (FORMAT.md, "Entropy coding").
TAIL_BITS = 160


class DecodeJob(TileJob):
    """Symbols come from the range decoder over ``payload``.

    The decoder stops with FormatError as soon as the symbols it decodes after the stream's
    last word carry more than TAIL_BITS of information: a header claiming millions of pixels
    over a few bytes of payload is refused after a few thousand symbols, not decoded from
    padding for hours. Until the stream is exhausted nothing is accounted (it cost ~5% of a
    CUDA decode to account every symbol)."""

    def __init__(self, grid: TileGrid, tiles: range, payload: bytes) -> None:
        super().__init__(grid, tiles)
        self.payload = payload  # what a worker process gets to decode the chunk
        self.decoder = Decoder(payload)

    def exchange(self, tiles: np.ndarray, y: int, x: int, c: int, probs: np.ndarray) -> np.ndarray:
        tail = self.decoder.maybe_exhausted()
        symbols = self.decoder.decode(probs)
        if tail:
            self._account(probs, symbols)
            if self.info_bits > TAIL_BITS:
                raise FormatError(
                    "a coder stream ends before its symbols do: the file is damaged or forged"
                )
        return symbols


class SampleJob(TileJob):
    """Symbols are drawn from the model's PMFs (``nncompress sample``)."""

    def __init__(self, grid: TileGrid, rng: np.random.Generator) -> None:
        super().__init__(grid)
        self.rng = rng

    def exchange(self, tiles: np.ndarray, y: int, x: int, c: int, probs: np.ndarray) -> np.ndarray:
        cdf = np.cumsum(probs.astype(np.float64) + (1.0 if self.integer else 0.0), axis=1)
        u = self.rng.random(len(probs))[:, None] * cdf[:, -1:]
        symbols = np.minimum((cdf < u).sum(axis=1), probs.shape[1] - 1).astype(np.int64)
        self._account(probs, symbols)
        return symbols


def plan_batches(jobs: Sequence[TileJob], max_batch: int) -> list[list[TileJob]]:
    """Pack whole jobs, in order, into batches of at most ``max_batch`` tiles (a job larger
    than that gets a batch of its own)."""
    batches: list[list[TileJob]] = []
    size = 0
    for job in jobs:
        if not batches or size + job.count > max_batch:
            batches.append([])
            size = 0
        batches[-1].append(job)
        size += job.count
    return batches


def chunk_ranges(count: int, chunk: int) -> list[range]:
    """Tiles 0..count-1 in chunks of ``chunk`` consecutive tiles (the last may be short)."""
    return [range(s, min(s + chunk, count)) for s in range(0, count, chunk)]


def run_schedule(
    model: LikelihoodModel,
    jobs: Sequence[TileJob],
    tile_h: int,
    tile_w: int,
    max_batch: int,
    progress: ProgressFn | None = None,
    replicate: bool = False,
) -> None:
    """Run the step loop for ``jobs`` (fills each job's ``tiles``), in batches of
    plan_batches(jobs, max_batch). ``replicate``: greyscale through an RGB model — only
    channel 0 is coded at each pixel, the others are set equal to it (FORMAT.md)."""
    integer = bool(getattr(model.distribution, "integer_tables", False))
    for job in jobs:
        job.tiles = np.zeros((job.count, model.channels, tile_h, tile_w), dtype=np.uint8)
        job.integer = integer
    for batch in plan_batches(jobs, max_batch):
        _run_batch(model, batch, tile_h, tile_w, progress, replicate)


class ChannelPmfs:
    """The coder's tables of one step, channel by channel, through the stepper's runner:
    the parameters, the values decoded so far and the distribution's per-pixel state sit in
    buffers that stay in place, so the same kernels serve every step (as CUDA graphs on
    CUDA). On CUDA the values come in, and the tables go out, through pinned host buffers
    copied inside that work, and one wait per channel collects the table.

    Graph memory: channel c's work reads what channel c-1's work left in ``state``; every
    step replays channel 0, 1, ... in turn right after the pixel step, so such a tensor is
    always consumed before any other work runs over the memory it shares with it.
    """

    def __init__(
        self,
        dist: Distribution,
        runner: StepRunner,
        n: int,
        channels: int,
        device: torch.device,
        params: torch.Tensor | None = None,
    ) -> None:
        self.dist, self.runner = dist, runner
        # The stepper's own parameter buffer when it has one (no copy per step).
        if params is None:
            params = torch.zeros(n, dist.num_params, device=device)
        self.params = params
        self.state = dist.coding_state(device)
        prepare = getattr(dist, "prepare_state", None)  # (buffers made outside any capture)
        if prepare is not None:
            prepare(self.state, n, device)
        cuda = device.type == "cuda"
        self.prev_host = torch.zeros(n, channels, dtype=torch.int64, pin_memory=cuda)
        self.prev = self.prev_host.to(device) if cuda else self.prev_host
        # float64: widened on the device (exactly), as the range coder takes them.
        self.tables = (
            [
                torch.zeros(n, NUM_SYMBOLS, dtype=torch.float64, pin_memory=True)
                for _ in range(channels)
            ]
            if cuda
            else None
        )
        self._done = torch.cuda.Event() if cuda else None
        # Looked up once: Event.record() without a stream looks it up at every call.
        self._stream = torch.cuda.current_stream(device) if cuda else None

    def set_params(self, params: torch.Tensor) -> None:
        if params.data_ptr() != self.params.data_ptr():
            self.params.copy_(params)

    def __call__(self, c: int, values: np.ndarray) -> np.ndarray:
        """(n, 256) probabilities of channel c given values[:, :c] (host, int64). The
        array is a buffer of this object, valid until the next call for the same c."""
        if c:
            self.prev_host.numpy()[:, :c] = values[:, :c]
        pmf = self.runner(("pmf", c), lambda: self._pmf(c))
        if self.tables is None:
            return pmf.numpy()
        self._done.record(self._stream)
        self._done.synchronize()
        return self.tables[c].numpy()

    def _pmf(self, c: int) -> torch.Tensor:
        if c and self.prev is not self.prev_host:
            self.prev.copy_(self.prev_host, non_blocking=True)
        pmf = self.dist.coding_pmf(self.params, c, self.prev, self.state)
        if self.tables is not None:
            self.tables[c].copy_(pmf.double(), non_blocking=True)
        return pmf


def _run_batch(
    model: LikelihoodModel,
    members: list[TileJob],
    tile_h: int,
    tile_w: int,
    progress: ProgressFn | None,
    replicate: bool = False,
) -> None:
    n = sum(job.count for job in members)
    stepper: Stepper = model.stepper(n, tile_h, tile_w)
    device = stepper.canvas.device
    stepper.runner = runner = step_runner(device)
    pmfs = ChannelPmfs(
        stepper.distribution, runner, n, model.channels, device, stepper.params_buffer
    )
    channels = model.channels
    coded_channels = 1 if replicate else channels
    # Per slot of this batch: valid extent (0 for filler slots), owner and tile index.
    vh = np.zeros(n, dtype=np.int64)
    vw = np.zeros(n, dtype=np.int64)
    spans = []  # (job, lo, hi, first tile index) with slots [lo, hi) of this batch
    lo = 0
    for job in members:
        hi = lo + job.count
        vh[lo:hi], vw[lo:hi] = job.extents.T
        spans.append((job, lo, hi, 0))
        lo = hi
    # Host mirror of the canvas: padding values are read from it without a device sync.
    mirror = np.zeros((n, channels, tile_h, tile_w), dtype=np.int64)
    slots = np.arange(n)
    edge = stepper.padding == "edge"
    # Every slot a whole tile (no padding, no filler): every position codes every slot.
    whole = bool((vh == tile_h).all() and (vw == tile_w).all())
    if whole:
        every = [_coded_rows(job, lo, hi, t0, np.ones(n, bool)) for job, lo, hi, t0 in spans]
    for y, x in stepper.order():
        if whole:
            values, coded = np.zeros((n, channels), dtype=np.int64), every
        else:
            valid = (y < vh) & (x < vw)
            if edge:
                sy = np.clip(np.minimum(y, vh - 1), 0, None)
                sx = np.clip(np.minimum(x, vw - 1), 0, None)
                values = mirror[slots, :, sy, sx]  # (n, C): padding; coded rows are overwritten
            else:
                values = np.zeros((n, channels), dtype=np.int64)
            coded = [_coded_rows(job, lo, hi, t0, valid) for job, lo, hi, t0 in spans]
        pmfs.set_params(stepper.params_at(y, x))  # (n, P) on device
        for c in range(coded_channels):
            probs = pmfs(c, values)  # (n, 256), float32 values
            for job, rows, tiles in coded:
                if len(tiles):
                    values[rows, c] = job.exchange(tiles, y, x, c, probs[rows])
        if replicate:
            values[:, 1:] = values[:, :1]
        mirror[:, :, y, x] = values
        stepper.write(y, x, torch.from_numpy(values))
        if progress is not None:
            progress(1)
    for job, lo, hi, t0 in spans:
        job.tiles[t0 : t0 + hi - lo] = mirror[lo:hi]


def _coded_rows(
    job: TileJob, lo: int, hi: int, t0: int, valid: np.ndarray
) -> tuple[TileJob, slice | np.ndarray, np.ndarray]:
    """The batch rows of ``job``'s slots [lo, hi) that have a pixel at this position (a
    slice when all do: the coder's tables are then a view, not a copy) and their tiles."""
    sel = np.flatnonzero(valid[lo:hi])
    if len(sel) == hi - lo:
        return job, slice(lo, hi), np.arange(t0, t0 + hi - lo)
    return job, lo + sel, t0 + sel
