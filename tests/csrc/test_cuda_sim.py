"""cuda_sim (csrc/cuda_sim/sim.h), the CPU simulation that runs the CUDA kernels in CI, catches what
it exists to catch, on kernels with the bugs (tests/csrc/cuda_sim_probe.cu): a warp whose lanes do
not all reach a full-mask shuffle, a race on shared memory without its barrier, dynamic shared
memory over the limit without the opt-in or accessed past its end; and shuffles with a width
give the sums of the lane groups, as on a GPU. That the real kernels pass on it is
tests/ops/test_fused_cuda.py's "sim" backend."""

import ctypes
import subprocess
import sys

import pytest
import torch

from tests.csrc.cuda_sim import build_probe, rewrite

INVALID_VALUE, LAUNCH_FAILURE = 1, 719


@pytest.fixture(scope="module")
def probe():
    return ctypes.CDLL(str(build_probe()))


def pointer(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def message_buffer():
    return ctypes.create_string_buffer(256)


@pytest.mark.parametrize("width", [32, 8, 2])
def test_shuffles_with_a_width_sum_each_group_of_lanes(probe, width):
    x = torch.arange(64, dtype=torch.float32) * 1.5 + 1
    out = torch.full((64,), float("nan"))
    assert probe.probe_warp_sum(pointer(x), pointer(out), 64, 32, width, None, 0) == 0
    assert torch.equal(out, x.view(-1, width).sum(1).repeat_interleave(width))


def test_a_lane_that_leaves_before_its_warps_shuffle_fails_the_launch(probe):
    x, out, message = torch.ones(64), torch.zeros(64), message_buffer()
    assert probe.probe_warp_sum(pointer(x), pointer(out), 64, 24, 8, message, 256) == LAUNCH_FAILURE
    assert b"lane 24 did not reach the full-mask shuffle" in message.value
    # The error is sticky only until read, and the abandoned block's threads are not the next
    # launch's: a correct launch of fewer threads succeeds.
    assert probe.probe_warp_sum(pointer(x), pointer(out), 32, 32, 8, None, 0) == 0
    assert torch.equal(out[:32], torch.full((32,), 8.0))


def test_a_race_on_shared_memory_changes_from_launch_to_launch(probe):
    with_barrier = []
    without = []
    for _ in range(4):
        out = torch.full((128,), float("nan"))
        assert probe.probe_neighbour(pointer(out), 128, 1, None, 0) == 0
        with_barrier.append(out)
        out = torch.full((128,), float("nan"))
        assert probe.probe_neighbour(pointer(out), 128, 0, None, 0) == 0
        without.append(out)
    expected = (torch.arange(128, dtype=torch.float32) + 1) % 128
    assert all(torch.equal(o, expected) for o in with_barrier)
    # Without the barrier a thread reads its neighbour's slot before or after it is written
    # (0xff bytes: NaN), depending on the launch's order of the threads.
    assert any(o.isnan().any() for o in without)
    assert any(not torch.equal(without[0].nan_to_num(-1), o.nan_to_num(-1)) for o in without[1:])


def test_dynamic_shared_memory_over_48k_needs_the_opt_in(probe):
    message = message_buffer()
    assert probe.probe_shared(48 * 1024, 0, 0, None, 0) == 0
    assert probe.probe_shared(64 * 1024, 0, 0, message, 256) == INVALID_VALUE
    assert b"dynamic shared memory over the limit" in message.value
    assert probe.probe_shared(64 * 1024, 1, 0, None, 0) == 0


def test_a_write_past_the_dynamic_shared_memory_faults():
    """(Sizes that are multiples of 16 bytes, as the kernels' are: the buffer is 16-aligned.)"""
    library = build_probe()
    code = ("import ctypes; probe = ctypes.CDLL({!r}); probe.probe_shared(1024, 0, {}, None, 0); "
            "print('no fault')")
    inside = subprocess.run([sys.executable, "-c", code.format(str(library), 0)],
                            capture_output=True, text=True, timeout=60)
    assert inside.returncode == 0 and "no fault" in inside.stdout, inside.stderr
    past = subprocess.run([sys.executable, "-c", code.format(str(library), 1)],
                          capture_output=True, text=True, timeout=60)
    assert past.returncode == -11 and "no fault" not in past.stdout  # SIGSEGV


def test_the_rewrite_turns_launches_and_dynamic_shared_memory_into_cpp():
    source = ("extern __shared__ unsigned char shared_bytes[];\n"
              "  column_sum_kernel<A><<<blocks, dim3(32, kSumRows), 0, stream>>>(p, n);\n"
              "  kernel<<<grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream>>>(\n"
              "      x, y);\n")
    assert rewrite(source) == (
        "unsigned char* shared_bytes = ::cuda_sim::dynamic_shared();\n"
        "  ::cuda_sim::launch(column_sum_kernel<A>, blocks, dim3(32, kSumRows), 0, stream)(p, n);\n"
        "  ::cuda_sim::launch(kernel, grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream)(\n"
        "      x, y);\n")
    with pytest.raises(ValueError, match="a kernel launch the rewrite does not know"):
        rewrite("(*table[i])<<<1, 32>>>(x);")
