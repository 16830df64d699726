"""The launch policy (``kernels.policy``): which layout a call gets, how wide rows are split
and waved, and the HBM traffic model that ``ldrld profile``'s "HBM B/el" column reports."""

import math

import pytest

from ldrld_kernels.kernels import policy
from ldrld_kernels.kernels.hardware import HOPPER, Hardware

L2 = HOPPER.l2_bytes  # 50 MiB


@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("classes", [37, 1000, 4096, 21843, 50257, 65536])
def test_fused_launch_gives_each_thread_a_few_hundred_classes(classes, itemsize):
    launch = policy.fused_launch(classes, itemsize, itemsize)
    assert launch.vec == 16 // itemsize  # one 16-byte access
    assert launch.lanes & (launch.lanes - 1) == 0
    assert policy.MIN_LANES <= launch.lanes <= policy.MAX_WARPS * policy.THREADS_PER_WARP
    per_thread = policy.ELEMENTS_PER_THREAD * 2 // itemsize
    if policy.MIN_LANES < launch.lanes < policy.MAX_WARPS * policy.THREADS_PER_WARP:
        assert per_thread <= classes / launch.lanes < 2 * per_thread
    # whole warps of rows: narrow rows share one warp, so no reduction leaves it
    assert launch.rows * launch.lanes == launch.num_warps * policy.THREADS_PER_WARP
    assert launch.num_warps == max(policy.SMALL_ROW_WARPS,
                                   launch.lanes // policy.THREADS_PER_WARP)
    assert launch.candidates == (2 if launch.lanes >= 256 else 3 if launch.lanes >= 32
                                 else 4 if launch.lanes >= 16 else 5)
    assert launch.split_chunks == 0


def test_the_widest_input_sets_the_access():
    assert policy.fused_launch(4096, 2, 4).vec == 4
    assert policy.fused_launch(4096, 2, 2).vec == 8


def test_launch_for_splits_rows_past_max_fused():
    assert policy.launch_for(64, policy.MAX_FUSED, 2, 2, HOPPER).split_chunks == 0
    assert policy.launch_for(64, policy.MAX_FUSED + 1, 2, 2, HOPPER).split_chunks > 0


@pytest.mark.parametrize("rows, classes, itemsize", [(4096, 131072, 2), (4096, 131072, 4),
                                                     (2048, 262144, 2), (16, 262144, 4),
                                                     (3, 70001, 4)])
def test_split_launch_keeps_a_wave_in_half_the_l2_and_one_program_per_slot(rows, classes,
                                                                          itemsize):
    launch = policy.split_launch(rows, classes, itemsize, itemsize, HOPPER)
    row_bytes = classes * 2 * itemsize
    assert launch.rows == 1 and launch.candidates == 3
    assert launch.wave_rows == min(rows, max(1, int(L2 * policy.L2_SHARE) // row_bytes))
    chunks = math.ceil((classes + launch.vec - 1) / (launch.lanes * launch.vec))
    splits = math.ceil(chunks / launch.split_chunks)
    assert splits <= policy.MAX_SPLITS
    assert launch.split_chunks >= policy.MIN_SPLIT_CHUNKS
    assert (splits - 1) * launch.split_chunks < chunks <= splits * launch.split_chunks
    # a wave's programs fit the resident slots at the resident-warp floor (one more would
    # take a second program time), and one split more would not, unless a row has one split
    # or more splits would take some below MIN_SPLIT_CHUNKS chunks or past MAX_SPLITS
    programs = launch.wave_rows * splits
    slots = HOPPER.multiprocessors * max(1, policy.RESIDENT_WARPS // launch.num_warps)
    assert programs <= slots or splits == 1
    assert programs + launch.wave_rows > slots or \
        launch.split_chunks < 2 * policy.MIN_SPLIT_CHUNKS or splits == policy.MAX_SPLITS


def test_split_launch_overrides():
    launch = policy.split_launch(3, 300, 4, 4, HOPPER, lanes=8, splits=3, wave_rows=2)
    assert (launch.lanes, launch.wave_rows) == (8, 2)
    chunks = math.ceil((300 + 3) / 32)
    assert math.ceil(chunks / launch.split_chunks) == 3


@pytest.mark.parametrize("classes, lanes, vec, shifted", [(1000, 8, 8, False), (1000, 8, 8, True),
                                                          (50257, 64, 8, True), (64, 8, 8, False),
                                                          (5, 8, 8, True)])
def test_chunk_bounds(classes, lanes, vec, shifted):
    first, last, end = policy.chunk_bounds(classes, lanes, vec, shifted)
    block = lanes * vec
    shift = vec - 1 if shifted else 0  # the largest shift: positions up to classes + shift
    assert first == (1 if shifted else 0) and first <= last <= end
    assert last * block <= max(classes, first * block)  # [first, last) lies inside any row
    assert end * block >= classes + shift  # every position of every row is in a chunk
    assert (end - 1) * block < classes + shift


def _hbm(rows, classes, itemsize, teacher_grad=False, ranks=1, hardware=HOPPER):
    return policy.hbm_bytes_per_element(rows, classes, itemsize, itemsize, teacher_grad,
                                        hardware, ranks)


def test_hbm_model_is_the_compulsory_bytes_when_the_rereads_fit():
    # one read of each input and one write of each gradient asked for
    assert _hbm(4096, 1000, 2) == 6.0 and _hbm(4096, 1000, 4) == 12.0
    assert _hbm(4096, 1000, 2, teacher_grad=True) == 8.0
    # wide rows: a wave holds half the L2 by construction
    assert _hbm(4096, 131072, 2) == 6.0 and _hbm(2048, 262144, 4) == 12.0


def test_hbm_model_counts_the_rereads_that_overflow_the_l2():
    # 32,000 classes of bfloat16: 64 threads of 2 warps per row, 8 programs per SM resident,
    # 60% of each row's 128,000 bytes waiting for the re-reads of the ranking input and both
    # inputs (2 + 2 + 2 bytes); the share beyond the L2 comes from HBM
    waiting = 0.6 * 132 * 8 * 32000 * 4
    assert _hbm(4096, 32000, 2) == pytest.approx(6 + 6 * (1 - L2 / waiting))
    assert 8.1 < _hbm(4096, 32000, 2) < 8.2  # (the README's column)
    # a larger L2 holds more of them
    bigger = Hardware("more L2", 132, 4 * L2)
    assert _hbm(4096, 32000, 2, hardware=bigger) == 6.0


def test_hbm_model_of_one_vocabulary_parallel_rank():
    # 8 ranks of 128,256 classes: the gradient phase re-reads both inputs after the
    # collectives, from L2 only for the part of the rank's rows that fits in it
    width = -(-128256 // 8)
    row_bytes = width * 4
    statistics = 0.6 * 132 * 16 * row_bytes  # one-warp programs, 16 resident per SM
    expected = 6 + 2 * (1 - L2 / statistics) + 4 * (1 - L2 / (8192 * row_bytes))
    assert _hbm(8192, 128256, 2, ranks=8) == pytest.approx(expected)
    assert 10.2 < expected < 10.4
    assert _hbm(8, 128256, 2, ranks=8) < _hbm(8192, 128256, 2, ranks=8)
