"""A simulation of PyTorch's CUDA caching allocator: how much GPU memory a sequence of tensor allocations needs.

torch does not hand freed memory back to CUDA: it caches the blocks and reuses them for later requests that fit.
What a workload needs from the card is therefore not its peak of live tensors but what the allocator has reserved
(``torch.cuda.max_memory_reserved``) when, under a limit, it has released every cached block it can and still
cannot serve a request. This module replays a sequence of ``malloc(size)`` / ``free(handle)`` calls through the
allocator's rules and finds the smallest limit under which the whole sequence is served.

The rules are those of ``DeviceCachingAllocator`` in c10/cuda/CUDACachingAllocator.cpp (pytorch/pytorch at
commit 001074d25084fdb87a799823e395a50f5ec044d3, the allocator of torch 2.11; its defaults: no
``max_split_size_mb``, no ``roundup_power2_divisions``, no garbage-collection threshold):

* ``round_size``: every request is rounded up to a multiple of ``kMinBlockSize`` = 512 bytes.
* ``get_pool``: requests up to ``kSmallSize`` = 1 MiB go to the small pool, larger ones to the large pool.
* ``get_allocation_size``: a new segment (cudaMalloc) is ``kSmallBuffer`` = 2 MiB for a small request,
  ``kLargeBuffer`` = 20 MiB for a request under ``kMinLargeAlloc`` = 10 MiB, else the request rounded up to
  ``kRoundLarge`` = 2 MiB.
* ``get_free_block``: best fit, the smallest cached block of the pool that is large enough (ties: lowest
  address, ``BlockComparatorSize``).
* ``should_split``: the found block is split when the rest is at least 512 bytes (small pool) or more than
  1 MiB (large pool); otherwise the whole block is handed out (and counted as allocated).
* ``free_block`` / ``try_merge_blocks``: a freed block merges with its free neighbours of the same segment.
* ``malloc``: when no cached block fits, ``alloc_block`` asks for a new segment; above the limit
  (``set_per_process_memory_fraction``, or the card's size) it fails, ``release_cached_blocks`` returns every
  cached segment that is wholly free to CUDA, and ``alloc_block`` is tried once more before the OOM error.
* Expandable segments (``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``): one segment per pool whose
  address space is ``1 1/8`` of the card and whose physical memory is mapped page by page (2 MiB pages for the
  small pool, 20 MiB for the large: ``find_expandable_block``); a request that no free block fits maps pages at
  the lowest address where free and unmapped space together fit it (``try_allocate_expandable_block``), blocks
  split whenever 512 bytes remain, and on OOM the free pages are unmapped (``release_blocks`` /
  ``unmap_block``). ``get_free_block`` prefers, among blocks that fit, one whose room including the unmapped
  space after it is smaller.

Pure Python, no I/O: the estimate path uses it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from gpuplan.units import MiB

MIN_BLOCK_SIZE = 512  # kMinBlockSize
SMALL_SIZE = 1 * MiB  # kSmallSize: largest "small" request
SMALL_BUFFER = 2 * MiB  # kSmallBuffer: segment of the small pool
LARGE_BUFFER = 20 * MiB  # kLargeBuffer: segment for requests of 1 to 10 MiB; page of an expandable large pool
MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc
ROUND_LARGE = 2 * MiB  # kRoundLarge
# Segments are placed this far apart in the simulated address space so that blocks of two segments never touch.
_SEGMENT_GAP = 1 << 40
_ADDRESS_TOP = 1 << 62
_KEPT_RESTS = 256


class SimulatedOutOfMemory(Exception):
    """The allocator could not serve a request under its limit, even after releasing its cache."""

    def __init__(self, size: int, reserved: int, allocated: int) -> None:
        super().__init__(f"cannot allocate {size:,} bytes: {reserved:,} reserved, {allocated:,} allocated")
        self.size = size


def round_size(size: int) -> int:
    """``round_size``: up to a multiple of 512 bytes, at least 512."""
    if size < MIN_BLOCK_SIZE:
        return MIN_BLOCK_SIZE
    return MIN_BLOCK_SIZE * ((size + MIN_BLOCK_SIZE - 1) // MIN_BLOCK_SIZE)


def allocation_size(size: int) -> int:
    """``get_allocation_size``: the segment cudaMalloc'ed for a (rounded) request no cached block fits."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * ((size + ROUND_LARGE - 1) // ROUND_LARGE)


@dataclass(eq=False)
class _Block:
    addr: int
    size: int
    small: bool
    segment: int
    allocated: bool = False
    mapped: bool = True
    prev: _Block | None = None
    next: _Block | None = None

    def key(self) -> tuple[int, int]:
        return (self.size, self.addr)

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


@dataclass
class _Pool:
    small: bool
    free: list[tuple[int, int]] = field(default_factory=list)  # (size, addr) of mapped free blocks, sorted
    by_addr: dict[int, _Block] = field(default_factory=dict)  # free mapped blocks by address
    unmapped: dict[int, _Block] = field(default_factory=dict)  # expandable segments' unmapped ranges

    def insert(self, block: _Block) -> None:
        bisect.insort(self.free, block.key())
        self.by_addr[block.addr] = block

    def remove(self, block: _Block) -> None:
        index = bisect.bisect_left(self.free, block.key())
        del self.free[index]
        del self.by_addr[block.addr]


class CachingAllocator:
    """One device's caching allocator. ``limit``: bytes it may reserve (None: unlimited);
    ``device_bytes``: the card's memory, which sizes an expandable segment's address space."""

    def __init__(self, *, expandable_segments: bool = False, limit: int | None = None,
                 device_bytes: int = 1 << 40) -> None:
        self.expandable = expandable_segments
        self.limit = limit
        self.device_bytes = device_bytes
        self.small = _Pool(small=True)
        self.large = _Pool(small=False)
        self.active: dict[int, _Block] = {}
        self.reserved = 0
        self.allocated = 0
        self.peak_reserved = 0
        self.peak_allocated = 0
        self.segments_allocated = 0
        self._next_addr = _ADDRESS_TOP
        self._segment_count = 0
        self._segment_base: dict[int, int] = {}  # expandable segment -> its first address (pages count from it)

    # -- public API -----------------------------------------------------------------------------------------

    def malloc(self, size: int) -> int:
        """Serve a request of ``size`` bytes; returns the block's address (the handle for :meth:`free`)."""
        size = round_size(size)
        pool = self.small if size <= SMALL_SIZE else self.large
        block = self._get_free_block(pool, size)
        if block is None:
            alloc = allocation_size(size)
            block = self._alloc_block(pool, size, alloc)
            if block is None:
                self.release_cached_blocks()
                block = self._alloc_block(pool, size, alloc)
            if block is None:
                raise SimulatedOutOfMemory(size, self.reserved, self.allocated)
        if self._should_split(block, size):
            rest = _Block(block.addr + size, block.size - size, block.small, block.segment, mapped=True,
                          prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            pool.insert(rest)
        block.allocated = True
        self.active[block.addr] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block.addr

    def free(self, addr: int) -> None:
        block = self.active.pop(addr)
        block.allocated = False
        self.allocated -= block.size
        pool = self.small if block.small else self.large
        for neighbour in (block.prev, block.next):
            self._try_merge(block, neighbour, pool)
        pool.insert(block)

    def release_cached_blocks(self) -> None:
        """``release_cached_blocks`` (also what ``torch.cuda.empty_cache()`` does)."""
        for pool in (self.large, self.small):
            for block in list(pool.by_addr.values()):
                if self.expandable:
                    self._unmap(pool, block)
                elif not block.is_split():
                    pool.remove(block)
                    self.reserved -= block.size

    def malloc_kept(self, size: int, count: int) -> None:
        """``count`` requests of ``size`` bytes that are never freed (the weights), served as :meth:`malloc`
        would serve them one by one, without the per-request work where the outcome is known: a request of
        ``kMinLargeAlloc`` or more that no cached block fits gets its own segment, and an expandable segment
        tiles such requests one after the other."""
        size = round_size(size)
        if count <= 0:
            return
        if self.expandable and size > SMALL_SIZE:
            self.malloc(size * count)
            return
        if size < MIN_LARGE_ALLOC or self.large.free and self.large.free[-1][0] >= size:
            for _ in range(count):
                self.malloc(size)
            return
        segment = allocation_size(size)
        rest = segment - size
        if rest > SMALL_SIZE:  # should_split: the rest stays cached in the same segment, pinned by the weight
            weight = _Block(0, size, False, -1, allocated=True)
            # Each rest can serve one request of up to ``rest`` bytes at a time; more than a few hundred of
            # them are never in use at once, so the others are counted as reserved but not kept as blocks.
            for _ in range(min(count, _KEPT_RESTS)):
                self.large.insert(_Block(self._segment_address(segment) + size, rest, False, self._segment_count,
                                         prev=weight))
                self._segment_count += 1
            self.allocated += size * count
        else:
            self.allocated += segment * count
        self.segments_allocated += count
        self._grow(segment * count)
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def clone(self) -> CachingAllocator:
        """An independent copy of the allocator's state (blocks, pools, counters)."""
        twin = CachingAllocator.__new__(CachingAllocator)
        twin.__dict__.update(self.__dict__)
        copies: dict[int, _Block] = {}

        def copy(block: _Block | None) -> _Block | None:
            if block is None:
                return None
            twin_block = copies.get(id(block))
            if twin_block is None:
                twin_block = _Block(block.addr, block.size, block.small, block.segment, block.allocated,
                                    block.mapped)
                copies[id(block)] = twin_block
            return twin_block

        originals = [*self.active.values(), *self.small.by_addr.values(), *self.large.by_addr.values(),
                     *self.small.unmapped.values(), *self.large.unmapped.values()]
        seen: set[int] = set()
        while originals:
            block = originals.pop()
            if id(block) in seen:
                continue
            seen.add(id(block))
            twin_block = copy(block)
            assert twin_block is not None
            twin_block.prev, twin_block.next = copy(block.prev), copy(block.next)
            originals.extend(b for b in (block.prev, block.next) if b is not None and id(b) not in seen)
        twin.active = {addr: copies[id(b)] for addr, b in self.active.items()}
        twin.small = self._clone_pool(self.small, copies)
        twin.large = self._clone_pool(self.large, copies)
        twin._segment_base = dict(self._segment_base)
        return twin

    @staticmethod
    def _clone_pool(pool: _Pool, copies: dict[int, _Block]) -> _Pool:
        return _Pool(small=pool.small, free=list(pool.free),
                     by_addr={addr: copies[id(b)] for addr, b in pool.by_addr.items()},
                     unmapped={addr: copies[id(b)] for addr, b in pool.unmapped.items()})

    def reset_peaks(self) -> None:
        self.peak_reserved = self.reserved
        self.peak_allocated = self.allocated

    # -- internals ------------------------------------------------------------------------------------------

    def _should_split(self, block: _Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.expandable:
            return remaining >= MIN_BLOCK_SIZE
        return remaining > SMALL_SIZE

    def _get_free_block(self, pool: _Pool, size: int) -> _Block | None:
        index = bisect.bisect_left(pool.free, (size, -1))
        if index == len(pool.free):
            return None
        block = pool.by_addr[pool.free[index][1]]
        if self.expandable:
            def room(b: _Block) -> int:
                return b.size + (b.next.size if b.next is not None and not b.next.mapped else 0)
            while index + 1 < len(pool.free):
                following = pool.by_addr[pool.free[index + 1][1]]
                if room(following) >= room(block):
                    break
                index += 1
                block = following
        pool.remove(block)
        return block

    def _over_limit(self, alloc: int) -> bool:
        return self.limit is not None and self.reserved + alloc > self.limit

    def _alloc_block(self, pool: _Pool, size: int, alloc: int) -> _Block | None:
        if self._over_limit(alloc):
            return None
        if self.expandable:
            return self._allocate_expandable(pool, size)
        # Each new segment is placed below the earlier ones. The address decides best fit's tie-break between
        # free blocks of the same size, and the CUDA driver's choice cannot be told from the sequence: in the
        # recorded traces (tests/fixtures/measurements/traces/) a new large segment lies below the previous
        # one 6,413 times and above it 4,168 times. Replayed either way, 33 of the 35 training traces need the same
        # smallest limit within 1.5%; two Qwen2.5-0.5B LoRA runs of the same tensors need 15.88 GiB placed below
        # and 17.1 placed above, and their searches found one each (tests/test_allocator_addresses.py).
        block = _Block(self._segment_address(alloc), alloc, pool.small, self._segment_count)
        self._segment_count += 1
        self._grow(alloc)
        self.segments_allocated += 1
        return block

    def _segment_address(self, alloc: int) -> int:
        """Where a new segment of ``alloc`` bytes starts: below every earlier one (see _alloc_block)."""
        self._next_addr -= alloc + _SEGMENT_GAP
        return self._next_addr

    def _grow(self, size: int) -> None:
        self.reserved += size
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _try_merge(self, dst: _Block, src: _Block | None, pool: _Pool) -> None:
        if src is None or src.allocated or src.mapped != dst.mapped:
            return
        if src.mapped:
            pool.remove(src)
        else:
            del pool.unmapped[src.addr]
        if dst.prev is src:
            dst.addr = src.addr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size

    # -- expandable segments --------------------------------------------------------------------------------

    def _page(self, pool: _Pool) -> int:
        return SMALL_BUFFER if pool.small else LARGE_BUFFER

    def _find_expandable(self, pool: _Pool, size: int) -> _Block:
        def available(start: _Block) -> bool:
            total, block = 0, start
            while total < size and block is not None and not block.allocated:
                total += block.size
                block = block.next
            return total >= size

        for addr in sorted(pool.unmapped):
            candidate = pool.unmapped[addr]
            if candidate.prev is not None and not candidate.prev.allocated:
                candidate = candidate.prev
            if available(candidate):
                return candidate
        page = self._page(pool)
        # 1 1/8 of the card's memory (find_expandable_block); a request larger than that would fail on the
        # card, but the estimate simulates a card with room to spare, so the space is then made to fit it.
        space = max(self.device_bytes + self.device_bytes // 8, size)
        space = page * ((space + page - 1) // page)
        block = _Block(self._segment_address(space), space, pool.small, self._segment_count, mapped=False)
        self._segment_base[block.segment] = block.addr
        self._segment_count += 1
        pool.unmapped[block.addr] = block
        return block

    def _map(self, pool: _Pool, block: _Block, size: int) -> None:
        """``map_block``: map whole pages from the start of the unmapped ``block`` to cover ``size`` bytes."""
        page = self._page(pool)
        mapped = min(block.size, page * ((size + page - 1) // page))
        del pool.unmapped[block.addr]
        block.mapped = True
        if mapped < block.size:
            rest = _Block(block.addr + mapped, block.size - mapped, block.small, block.segment, mapped=False,
                          prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            pool.unmapped[rest.addr] = rest
            block.size = mapped
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        pool.insert(block)
        self._grow(mapped)
        self.segments_allocated += 1

    def _allocate_expandable(self, pool: _Pool, size: int) -> _Block:
        candidate = self._find_expandable(pool, size)
        if not candidate.mapped:
            self._map(pool, candidate, min(candidate.size, size))
        while candidate.size < size:
            following = candidate.next
            assert following is not None and not following.mapped
            self._map(pool, following, min(size - candidate.size, following.size))
            candidate = following
        pool.remove(candidate)
        return candidate

    def _unmap(self, pool: _Pool, block: _Block) -> None:
        """``unmap_block``: give back the whole pages inside a free block of an expandable segment."""
        page = self._page(pool)
        base = self._segment_base[block.segment]
        start = base + page * ((block.addr - base + page - 1) // page)
        end = base + page * ((block.addr + block.size - base) // page)
        if end <= start:
            return
        pool.remove(block)
        if start > block.addr:
            before = _Block(block.addr, start - block.addr, block.small, block.segment, prev=block.prev, next=block)
            if block.prev is not None:
                block.prev.next = before
            block.prev = before
            pool.insert(before)
        if end < block.addr + block.size:
            after = _Block(end, block.addr + block.size - end, block.small, block.segment, prev=block,
                           next=block.next)
            if block.next is not None:
                block.next.prev = after
            block.next = after
            pool.insert(after)
        block.addr, block.size, block.mapped = start, end - start, False
        self.reserved -= block.size
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        pool.unmapped[block.addr] = block


# An allocation sequence: ("a", tensor id, bytes) allocates, ("f", tensor id, 0) frees, ("w", count, bytes)
# allocates ``count`` tensors that are never freed, ("e", 0, 0) is torch.cuda.empty_cache().
Event = tuple[str, int, int]


def _run(allocator: CachingAllocator, handles: dict[int, int], events: list[Event], start: int = 0,
         stop: int | None = None) -> None:
    for action, tensor, size in events[start:stop]:
        if action == "a":
            handles[tensor] = allocator.malloc(size)
        elif action == "f":
            allocator.free(handles.pop(tensor))
        elif action == "w":
            allocator.malloc_kept(size, tensor)
        elif action == "e":  # torch.cuda.empty_cache()
            allocator.release_cached_blocks()
        else:
            raise ValueError(f"unknown event {action!r}")


def replay(events: Iterable[Event], *, expandable_segments: bool = False, limit: int | None = None,
           device_bytes: int = 1 << 40) -> CachingAllocator:
    """Run a sequence through a fresh allocator; raises :class:`SimulatedOutOfMemory` when it does not fit."""
    allocator = CachingAllocator(expandable_segments=expandable_segments, limit=limit, device_bytes=device_bytes)
    _run(allocator, {}, list(events))
    return allocator


def _first_over(events: list[Event], limit: int, *, expandable_segments: bool, device_bytes: int) -> int:
    """Index of the first event at which a run under ``limit`` can differ from an unlimited one: the first
    request that would make the allocator reserve more than ``limit``. Up to it both runs are the same."""
    allocator = CachingAllocator(expandable_segments=expandable_segments, device_bytes=device_bytes)
    handles: dict[int, int] = {}
    for index, event in enumerate(events):
        action, _, size = event
        if action == "w" and allocator.reserved + allocation_size(round_size(size)) * max(1, event[1]) > limit:
            return index
        if action == "a" and allocator.reserved + allocation_size(round_size(size)) > limit:
            return index
        _run(allocator, handles, events, index, index + 1)
    return len(events)


def search_step(peak_allocated: int) -> int:
    """Resolution of :func:`smallest_limit`: 2 MiB (the allocator's own rounding of large segments), doubled
    while it stays under 0.1% of the peak: far finer than the 2% the estimate is held to, in fewer replays."""
    step = ROUND_LARGE
    while step * 2 <= peak_allocated // 1000:
        step *= 2
    return step


def smallest_limit(events: list[Event], *, expandable_segments: bool = False, step: int | None = None,
                   device_bytes: int = 1 << 40, free_run: CachingAllocator | None = None) -> int:
    """The smallest reserved-memory limit (a multiple of ``step``, by default :func:`search_step`) under which
    the whole sequence is served: the same binary search as ``gpuplan verify --min-memory``, between the peak
    allocation (too little) and the unlimited run's peak reservation (enough)."""
    if free_run is None:
        free_run = replay(events, expandable_segments=expandable_segments, device_bytes=device_bytes)
    step = step or search_step(free_run.peak_allocated)
    low = free_run.peak_allocated // step - 1
    high = -(-free_run.peak_reserved // step)

    # Every limit tried is at least (low + 1) * step: the runs share their events up to the first request that
    # would pass it, so that part is replayed once and each run continues from a copy of its state.
    prefix = _first_over(events, (low + 1) * step, expandable_segments=expandable_segments,
                         device_bytes=device_bytes)
    base = CachingAllocator(expandable_segments=expandable_segments, device_bytes=device_bytes)
    base_handles: dict[int, int] = {}
    _run(base, base_handles, events, 0, prefix)

    def fits(limit: int) -> bool:
        allocator = base.clone()
        allocator.limit = limit
        try:
            _run(allocator, dict(base_handles), events, prefix)
        except SimulatedOutOfMemory:
            return False
        return True

    # Most sequences fit in their peak allocation rounded up to a step: one replay settles them.
    if high - low > 1 and fits((low + 1) * step):
        return (low + 1) * step
    low += 1
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle * step):
            high = middle
        else:
            low = middle
    return high * step


@dataclass(frozen=True)
class AllocatorFit:
    """What a sequence needs from PyTorch's allocator: ``limit_bytes``, the smallest reserved memory under which
    it completes (a card with that much for torch runs it); ``peak_reserved_bytes``, what it reserves on a card
    with room to spare; ``peak_allocated_bytes``, its live tensors at their peak."""

    limit_bytes: int
    peak_reserved_bytes: int
    peak_allocated_bytes: int


def fit_sequence(large: list[Event], small: list[Event], *, expandable_segments: bool = False,
                 device_bytes: int = 1 << 40) -> AllocatorFit:
    """The large pool (requests over 1 MiB) and the small pool never share a segment, so each is replayed on
    its own: the large pool's smallest limit plus the small pool's peak reservation (its 2 MiB segments stay
    cached; ``small`` may be a prefix of the run, since decode steps repeat the same small tensors)."""
    kwargs = {"expandable_segments": expandable_segments, "device_bytes": device_bytes}
    free_run = replay(large, **kwargs)  # type: ignore[arg-type]
    small_run = replay(small, **kwargs)  # type: ignore[arg-type]
    limit = smallest_limit(large, free_run=free_run, **kwargs) if large else 0  # type: ignore[arg-type]
    return AllocatorFit(limit_bytes=limit + small_run.peak_reserved,
                        peak_reserved_bytes=free_run.peak_reserved + small_run.peak_reserved,
                        peak_allocated_bytes=free_run.peak_allocated + small_run.peak_allocated)


def fit_whole(events: list[Event], *, expandable_segments: bool = False, device_bytes: int = 1 << 40) -> AllocatorFit:
    """Both pools replayed together under one limit, as a capped allocator runs them: the limit
    (``set_per_process_memory_fraction``) counts the segments of both pools, and a request that would pass it
    first releases every cached segment, small ones included (``release_cached_blocks``). Near the limit which
    segments are free at that moment decides whether a run completes, so the pools cannot be sized apart there:
    the recorded traces of the LoRA runs on a 152k vocabulary (``traces/training/``), replayed as two pools, need
    33.0 GiB where the capped runs completed in 30.5, and replayed whole they need 30.5."""
    kwargs = {"expandable_segments": expandable_segments, "device_bytes": device_bytes}
    free_run = replay(events, **kwargs)  # type: ignore[arg-type]
    limit = smallest_limit(events, free_run=free_run, **kwargs) if events else 0  # type: ignore[arg-type]
    return AllocatorFit(limit_bytes=limit, peak_reserved_bytes=free_run.peak_reserved,
                        peak_allocated_bytes=free_run.peak_allocated)

