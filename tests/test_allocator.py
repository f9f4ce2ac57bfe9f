"""The caching-allocator simulation, rule by rule (c10/cuda/CUDACachingAllocator.cpp), and the search for the
smallest cap that ``gpuplan verify --min-memory`` runs on a GPU, tested here with a fake allocator."""

from __future__ import annotations

import pytest

from gpuplan.calc.allocator import (
    CachingAllocator,
    SimulatedOutOfMemory,
    allocation_size,
    replay,
    round_size,
    smallest_limit,
)
from gpuplan.units import MiB
from gpuplan.verify.min_memory import smallest_cap


def test_round_size_and_segment_sizes():
    assert round_size(1) == 512 and round_size(512) == 512 and round_size(513) == 1024
    assert allocation_size(1 * MiB) == 2 * MiB  # small pool
    assert allocation_size(1 * MiB + 512) == 20 * MiB  # 1 to 10 MiB: packed in 20 MiB
    assert allocation_size(10 * MiB - 512) == 20 * MiB
    assert allocation_size(10 * MiB) == 10 * MiB
    assert allocation_size(11 * MiB + 1) == 12 * MiB  # rounded to 2 MiB


def test_small_requests_share_a_two_mib_segment():
    alloc = CachingAllocator()
    for _ in range(4):
        alloc.malloc(100_000)
    assert alloc.reserved == 2 * MiB
    assert alloc.allocated == 4 * round_size(100_000)


def test_medium_requests_are_packed_in_twenty_mib_segments():
    alloc = CachingAllocator()
    for _ in range(6):
        alloc.malloc(3 * MiB)
    assert alloc.reserved == 20 * MiB  # 6 x 3 MiB split off one segment
    alloc.malloc(3 * MiB)
    assert alloc.reserved == 40 * MiB


def test_large_block_is_not_split_when_one_mib_or_less_remains():
    alloc = CachingAllocator()
    a = alloc.malloc(40 * MiB)
    alloc.free(a)
    alloc.malloc(39 * MiB + 512 * 1024)  # 0.5 MiB would remain: the whole block is handed out
    assert alloc.allocated == 40 * MiB
    assert alloc.reserved == 40 * MiB


def test_best_fit_and_coalescing():
    alloc = CachingAllocator()
    big = alloc.malloc(100 * MiB)
    alloc.free(big)
    a = alloc.malloc(30 * MiB)  # split off the cached 100 MiB segment
    b = alloc.malloc(30 * MiB)
    assert alloc.reserved == 100 * MiB
    alloc.free(a)
    alloc.free(b)  # both merge back with the 40 MiB rest: one free 100 MiB block
    alloc.malloc(100 * MiB)
    assert alloc.reserved == 100 * MiB


def test_fragmentation_then_release_and_retry_under_a_limit():
    """A growing tensor leaves its old block behind; under a limit the cached segments are released first."""
    events = [("a", 1, 40 * MiB), ("a", 2, 42 * MiB), ("f", 1, 0), ("a", 3, 44 * MiB), ("f", 2, 0)]
    free_run = replay(events)
    assert free_run.peak_reserved == (40 + 42 + 44) * MiB
    assert free_run.peak_allocated == (42 + 44) * MiB
    with pytest.raises(SimulatedOutOfMemory):
        replay(events, limit=(42 + 44) * MiB - 2 * MiB)
    capped = replay(events, limit=(42 + 44) * MiB)  # releases the free 40 MiB segment, then succeeds
    assert capped.peak_reserved == (42 + 44) * MiB
    assert smallest_limit(events) == (42 + 44) * MiB


def test_split_segment_cannot_be_released():
    """A block still allocated inside a segment pins the whole segment: the released cache does not help."""
    events = [("a", 1, 100 * MiB), ("f", 1, 0), ("a", 2, 10 * MiB), ("a", 3, 95 * MiB)]
    # 10 MiB is split off the cached 100 MiB; the 90 MiB rest cannot serve 95 MiB and cannot be released.
    assert replay(events).peak_reserved == 196 * MiB
    assert smallest_limit(events) == 196 * MiB


def test_expandable_segments_grow_in_place():
    events = [("a", 1, 40 * MiB), ("a", 2, 42 * MiB), ("f", 1, 0), ("a", 3, 44 * MiB), ("f", 2, 0)]
    # 40 MiB maps two 20 MiB pages, 42 MiB three more (18 MiB left free after it); 44 MiB then extends that
    # free tail by two pages: 140 MiB mapped without a limit.
    assert replay(events, expandable_segments=True).peak_reserved == 140 * MiB
    # Under a limit the freed 40 MiB (two whole pages) is unmapped first: 60 MiB held + 44 MiB requested.
    assert smallest_limit(events, expandable_segments=True) == 104 * MiB
    split = [("a", 1, 100 * MiB), ("f", 1, 0), ("a", 2, 10 * MiB), ("a", 3, 95 * MiB)]
    # The free tail after the 10 MiB block grows by new pages instead of a new segment: 120 MiB, not 196.
    assert replay(split, expandable_segments=True).peak_reserved == 120 * MiB


def test_expandable_release_unmaps_free_pages():
    alloc = CachingAllocator(expandable_segments=True)
    a = alloc.malloc(100 * MiB)
    alloc.free(a)
    assert alloc.reserved == 100 * MiB
    alloc.release_cached_blocks()
    assert alloc.reserved == 0


class FakeAllocatorGpu:
    """A GPU whose workload needs ``need`` bytes under a cap: runs at or above it, OOMs below."""

    def __init__(self, need: int) -> None:
        self.need = need
        self.calls: list[int] = []

    def runs(self, cap: int) -> bool:
        self.calls.append(cap)
        return cap >= self.need


@pytest.mark.parametrize("need_mib", [1000, 1001, 1023, 1024, 1025, 1100, 1999])
def test_smallest_cap_search_finds_the_first_cap_that_runs(need_mib):
    gpu = FakeAllocatorGpu(need_mib * MiB)
    step = 64 * MiB
    result = smallest_cap(gpu.runs, known_fail=999 * MiB, known_pass=2000 * MiB, step=step)
    assert result.cap_bytes >= gpu.need > result.cap_bytes - step
    assert result.cap_bytes % step == 0
    assert len(gpu.calls) <= 5  # ceil(log2(1001 MiB / 64 MiB))
    assert result.attempts == [(cap, cap >= gpu.need) for cap in gpu.calls]


def test_smallest_cap_search_exact_peak_may_suffice():
    gpu = FakeAllocatorGpu(1024 * MiB)
    result = smallest_cap(gpu.runs, known_fail=1024 * MiB, known_pass=1100 * MiB, step=64 * MiB)
    assert result.cap_bytes == 1024 * MiB


def test_smallest_cap_search_rejects_bad_bounds():
    with pytest.raises(ValueError):
        smallest_cap(lambda cap: True, known_fail=10, known_pass=10)
    with pytest.raises(ValueError):
        smallest_cap(lambda cap: True, known_fail=0, known_pass=10, step=0)


class FakeTorch:
    """Just enough of torch for gpuplan/verify/min_memory.py: a GPU whose workload reserves ``need`` bytes and
    raises OutOfMemoryError under a smaller cap."""

    class OutOfMemoryError(Exception):
        pass

    def __init__(self, need: int, allocated: int, reserved: int, total: int = 80 * 1024 * MiB) -> None:
        import types

        self.need, self.total, self.fraction = need, total, 1.0
        self.peaks = (allocated, reserved)
        self.runs: list[float] = []
        fake = self

        def set_fraction(value: float) -> None:
            fake.fraction = value

        self.cuda = types.SimpleNamespace(
            synchronize=lambda: None, empty_cache=lambda: None, current_device=lambda: 0,
            get_device_properties=lambda index: types.SimpleNamespace(total_memory=total),
            reset_peak_memory_stats=lambda: None, set_per_process_memory_fraction=set_fraction,
            max_memory_allocated=lambda: fake.peaks[0], max_memory_reserved=lambda: fake.peaks[1],
            memory_reserved=lambda: 0, mem_get_info=lambda: (total - 700 * MiB, total))

    def work(self) -> None:
        cap = self.fraction * self.total
        self.runs.append(cap)
        if cap < self.need:
            raise self.OutOfMemoryError("CUDA out of memory")


def test_measure_min_memory_with_a_fake_allocator(monkeypatch):
    from gpuplan.verify import min_memory

    fake = FakeTorch(need=30_000 * MiB, allocated=28_000 * MiB, reserved=33_000 * MiB)
    monkeypatch.setattr(min_memory, "_torch", lambda: fake)
    result = min_memory.measure_min_memory(fake.work)
    assert result["peak_allocated"] == 28_000 * MiB and result["peak_reserved"] == 33_000 * MiB
    assert result["outside_torch"] == 700 * MiB
    assert 30_000 * MiB <= result["min_cap"] < 30_000 * MiB + 64 * MiB
    assert result["min_gpu_bytes"] == result["min_cap"] + 700 * MiB
    assert fake.fraction == 1.0  # the cap is lifted after the search
    assert len(fake.runs) == 1 + len(result["attempts"]) <= 1 + 7


def test_measure_min_memory_reports_an_uncapped_oom(monkeypatch):
    from gpuplan.verify import min_memory

    fake = FakeTorch(need=10**15, allocated=0, reserved=0)
    monkeypatch.setattr(min_memory, "_torch", lambda: fake)
    assert min_memory.measure_min_memory(fake.work) == {"oom": True}


def test_verify_min_memory_cli_prints_the_search_and_sets_the_exit_code(monkeypatch):
    from typer.testing import CliRunner

    from gpuplan.cli.app import app
    from gpuplan.verify import min_memory

    record = {"case_id": "Qwen/Qwen3-0.6B|bf16|sdpa|b8|p2032|n16", "kind": "generate", "gpu_name": "NVIDIA H100",
              "allocator": "default", "oom": False, "peak_allocated": 5 * 1024 * MiB,
              "peak_reserved": 6 * 1024 * MiB, "outside_torch": 700 * MiB, "min_cap": 5632 * MiB,
              "min_gpu_bytes": 6332 * MiB, "search_step": 64 * MiB, "attempts": [[5632 * MiB, True]],
              "estimate_total_bytes": 6400 * MiB, "estimate_peak_allocated_bytes": 5 * 1024 * MiB}
    record["error"] = (6400 - 6332) / 6332
    seen = {}

    def fake_verify(resolved, estimate, *, random_weights, progress):
        seen["estimate"] = estimate
        return record

    monkeypatch.setattr(min_memory, "verify_min_memory", fake_verify)
    runner = CliRunner()
    args = ["verify", "Qwen/Qwen3-0.6B", "--dtype", "bf16", "--batch", "8", "--random-weights", "--min-memory"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "smallest GPU that runs it" in result.output and "+1.07%" in result.output
    assert seen["estimate"].batch == 8
    result = runner.invoke(app, [*args, "--tolerance", "1%"])
    assert result.exit_code == 1
    result = runner.invoke(app, [*args, "--format", "json"])
    assert '"min_gpu_bytes"' in result.output
    result = runner.invoke(app, [*args, "--gpus", "2"])
    assert result.exit_code == 2 and "one GPU" in result.output
