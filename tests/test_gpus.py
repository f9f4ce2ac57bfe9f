"""The GPU catalog (data/gpus.yaml), name resolution, custom GPUs and the NVML probe.

The probe is exercised with recorded NVML answers in tests/fixtures/nvml/: two were recorded live on
H200 machines, the others transcribe nvidia-smi / NVML output pasted in public issues (each file names
its source).
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuplan.errors import EXIT_USAGE, InputError, MissingDependencyError
from gpuplan.gpus import (
    BINARY_PREFIX,
    MARKETED,
    GpuCatalog,
    GpuSpec,
    custom_gpu,
    data_path,
    load_catalog,
    normalize_gpu_name,
)
from gpuplan.gpus.nvml import (
    NvmlUnavailable,
    ProbeResult,
    PynvmlBackend,
    ReplayBackend,
    probe,
    record_answers,
)
from gpuplan.units import GB, GiB, MiB

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"
REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
DEVICE_FIXTURES = [p for p in FIXTURE_FILES if "devices" in json.loads(p.read_text())]

CATALOG = load_catalog()


def _fixture(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# The bundled data


def test_catalog_has_at_least_55_gpus() -> None:
    assert len(CATALOG) >= 55
    assert len(set(CATALOG.names())) == len(CATALOG)


def test_bundled_file_is_found() -> None:
    # A checkout reads data/gpus.yaml at the root; an installed wheel its copy in gpuplan/data/.
    assert data_path().read_bytes() == (REPO_ROOT / "data" / "gpus.yaml").read_bytes()


def test_bundled_file_is_found_in_a_wheel_layout(tmp_path: Path) -> None:
    # In a wheel, data/ is packaged as gpuplan/data/ (pyproject.toml force-include).
    package = tmp_path / "site-packages" / "gpuplan"
    (package / "data").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "data" / "gpus.yaml", package / "data" / "gpus.yaml")
    assert data_path(package_dir=package) == package / "data" / "gpus.yaml"
    assert len(load_catalog(data_path(package_dir=package))) == len(CATALOG)


def test_missing_bundled_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        data_path(package_dir=tmp_path / "gpuplan")


def test_loading_is_cached() -> None:
    assert load_catalog() is load_catalog()


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.name)
def test_every_entry_is_sourced(gpu: GpuSpec) -> None:
    """docs/gpus.md's rule: a capture of the card, else one of a card with the same memory, else binary."""
    assert gpu.source.strip()
    source = gpu.memory_bytes_source
    assert source != MARKETED, "the bundled catalog never reads marketed GB as 10^9 bytes"
    if source.startswith(BINARY_PREFIX):
        stated_gib = int(source.removeprefix(BINARY_PREFIX).split()[0])
        assert gpu.memory_bytes == stated_gib * GiB
        assert not gpu.memory_is_measured
        return
    assert gpu.memory_is_measured
    if source.startswith("same memory as "):
        sibling = CATALOG.resolve(source.removeprefix("same memory as ").split()[0])
        assert sibling.name != gpu.name and sibling.memory_bytes == gpu.memory_bytes
        assert source.endswith(sibling.memory_bytes_source)
        source = sibling.memory_bytes_source
    # A driver-reported figure names where it appears: a public URL or a fixture in this repository.
    assert source.startswith("https://") or source.startswith("tests/fixtures/"), source
    if source.startswith("tests/fixtures/"):
        assert (REPO_ROOT / source.split()[0]).is_file()


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.name)
def test_memory_figures_are_sane(gpu: GpuSpec) -> None:
    marketed = gpu.memory_gb * GB
    assert gpu.memory_bytes <= marketed * 1.1
    # Drivers keep a few percent for themselves; nothing reports half of what is on the box.
    assert gpu.memory_bytes >= marketed * 0.9
    if gpu.memory_is_measured:
        # nvidia-smi and rocm-smi totals are whole MiB.
        assert gpu.memory_bytes % MiB == 0
    assert 1 <= gpu.memory_gb <= 300


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.name)
def test_throughput_figures_are_sane(gpu: GpuSpec) -> None:
    if gpu.bandwidth_gbps is not None:
        assert 100 <= gpu.bandwidth_gbps <= 10_000
    if gpu.bf16_tflops is not None:
        assert 10 <= gpu.bf16_tflops <= 3_000
    if gpu.fp8_tflops is not None:
        assert gpu.bf16_tflops is None or gpu.fp8_tflops >= gpu.bf16_tflops
    assert gpu.gpus_per_node in (1, 2, 4, 8, 72)


def test_the_well_known_driver_figures() -> None:
    # nvidia-smi totals quoted in modal-labs/modal-client#2797 and NVIDIA/nccl#1264.
    assert CATALOG.resolve("H100").memory_bytes == 81559 * MiB == 85520809984
    assert CATALOG.resolve("A100-80GB").memory_bytes == 81920 * MiB
    assert CATALOG.resolve("L4").memory_bytes == 23034 * MiB
    assert CATALOG.resolve("T4").memory_bytes == 15360 * MiB


# Cards added for the inference fleets people run beyond the big SXM parts; each must say where its
# figures come from.
ADDED_CARDS = ["A30", "MI210", "RTX 3090 Ti", "7900 XTX", "L20", "RTX 4000 Ada", "RTX 5000 Ada", "A2", "A16"]


@pytest.mark.parametrize("typed", ADDED_CARDS)
def test_added_cards_carry_their_sources(typed: str) -> None:
    gpu = CATALOG.resolve(typed)
    assert gpu.source.startswith("https://"), gpu.source
    has_figures = any(v is not None for v in (gpu.bandwidth_gbps, gpu.bf16_tflops, gpu.fp8_tflops))
    if has_figures:
        assert gpu.spec_refs, f"{gpu.name} gives throughput figures without saying where they were read"
        assert all(ref.startswith("https://") for ref in gpu.spec_refs), gpu.spec_refs


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.name)
def test_cuda_totals_are_sourced_and_below_the_driver_total(gpu: GpuSpec) -> None:
    if gpu.cuda_total_bytes is None:
        assert gpu.cuda_total_bytes_source is None
        return
    assert (gpu.cuda_total_bytes_source or "").strip()
    if gpu.memory_is_measured:
        # CUDA sees the driver total less what the driver reserves, never more.
        assert gpu.cuda_total_bytes <= gpu.memory_bytes


def test_driver_figures_of_the_added_and_updated_cards() -> None:
    # Each figure is quoted in the entry's memory_bytes_source.
    assert CATALOG.resolve("MI210").memory_bytes == 65520 * MiB == 67092480 * 1024
    assert CATALOG.resolve("7900 XTX").memory_bytes == 24560 * MiB
    assert CATALOG.resolve("RTX 3090 Ti").memory_bytes == 24564 * MiB
    assert CATALOG.resolve("A40").memory_bytes == 46068 * MiB
    assert CATALOG.resolve("RTX A6000").memory_bytes == 49140 * MiB
    assert CATALOG.resolve("RTX A6000 ECC").memory_bytes == 46068 * MiB
    assert CATALOG.resolve("V100 SXM2 16GB").memory_bytes == 16384 * MiB
    assert CATALOG.resolve("GH200").memory_bytes == 97871 * MiB
    assert CATALOG.resolve("A40").cuda_total_bytes == 47608692736
    assert CATALOG.resolve("RTX A6000").cuda_total_bytes == round(47.54 * GiB)
    assert CATALOG.resolve("RTX A6000 ECC").cuda_total_bytes == 47834660864


def test_the_rtx_a6000_defaults_to_ecc_off_and_names_the_ecc_on_card() -> None:
    # RTX cards ship with ECC off and most public captures show 49140 MiB; with ECC on 1/16 of the memory holds
    # check bits (46068 MiB). Both report the same NVML name, so a probed card goes to the entry nearest its memory.
    default, ecc_on = CATALOG.resolve("RTX A6000"), CATALOG.resolve("RTX A6000 (ECC on)")
    assert (default.name, ecc_on.name) == ("RTX-A6000", "RTX-A6000-ECC")
    assert ecc_on.memory_bytes == default.memory_bytes * 15 // 16 // MiB * MiB
    assert CATALOG.resolve("A6000 ECC").name == ecc_on.name
    assert CATALOG.resolve("RTX A6000 ECC off").name == default.name
    assert CATALOG.match_device("NVIDIA RTX A6000", 46068 * MiB).name == "RTX-A6000-ECC"
    assert CATALOG.match_device("NVIDIA RTX A6000", 49140 * MiB).name == "RTX-A6000"
    assert CATALOG.match_device("NVIDIA RTX A6000").name == "RTX-A6000"
    assert CATALOG.resolve("NVIDIA RTX A6000").name == "RTX-A6000"


def test_the_added_datacenter_cards() -> None:
    a30 = CATALOG.resolve("A30")
    assert a30.memory_gb == 24 and a30.bandwidth_gbps == 933 and a30.bf16_tflops == 165
    mi210 = CATALOG.resolve("MI210")
    assert mi210.vendor == "amd" and mi210.memory_gb == 64
    assert mi210.bandwidth_gbps == 1600 and mi210.bf16_tflops == 181
    # Ampere and CDNA 2 have no FP8 tensor cores.
    for name in ("A30", "MI210", "A2", "A16"):
        assert CATALOG.resolve(name).fp8_tflops is None, name
    # The A16 board carries four GPUs; the entry describes one of them.
    assert CATALOG.resolve("A16").memory_gb == 16


def test_match_device_tells_the_3090_ti_from_the_3090() -> None:
    assert CATALOG.match_device("NVIDIA GeForce RTX 3090 Ti", 24564 * MiB).name == "RTX-3090-Ti"
    assert CATALOG.match_device("NVIDIA GeForce RTX 3090", 24576 * MiB).name == "RTX-3090"
    assert CATALOG.match_device("NVIDIA GH200 480GB", 97871 * MiB).name == "GH200-96GB"


def test_enough_entries_carry_a_driver_reported_figure() -> None:
    measured = [gpu.name for gpu in CATALOG if gpu.memory_is_measured]
    assert len(measured) >= 25, measured


# --------------------------------------------------------------------------------------------------
# Name resolution


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("H100", "H100-SXM-80GB"),
        ("h100 sxm", "H100-SXM-80GB"),
        ("H100-SXM-80GB", "H100-SXM-80GB"),
        ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB"),
        ("H100 PCIe", "H100-PCIe-80GB"),
        ("H100 NVL", "H100-NVL-94GB"),
        ("rtx-4090", "RTX-4090"),
        ("RTX4090", "RTX-4090"),
        ("RTX 4090", "RTX-4090"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("4090", "RTX-4090"),
        ("A100-80GB", "A100-SXM-80GB"),
        ("A100", "A100-SXM-80GB"),
        ("a100 40gb", "A100-SXM-40GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"),
        ("Tesla T4", "T4"),
        ("l40s", "L40S"),
        ("L40", "L40"),
        ("H200", "H200-SXM-141GB"),
        ("H20", "H20-96GB"),
        ("GH200", "GH200-96GB"),
        ("RTX 6000 Ada", "RTX-6000-Ada"),
        ("RTX A6000", "RTX-A6000"),
        ("RTX A6000 ECC", "RTX-A6000-ECC"),
        ("AMD Instinct MI300X", "MI300X"),
        ("mi300x", "MI300X"),
        ("Gaudi 3", "Gaudi3"),
        ("RTX 3080", "RTX-3080-10GB"),
        ("RTX 3080 12GB", "RTX-3080-12GB"),
        ("A30", "A30-24GB"),
        ("NVIDIA A30", "A30-24GB"),
        ("mi210", "MI210"),
        ("AMD Instinct MI210", "MI210"),
        ("RTX 3090 Ti", "RTX-3090-Ti"),
        ("NVIDIA GeForce RTX 3090 Ti", "RTX-3090-Ti"),
        ("RTX 3090", "RTX-3090"),
        ("7900 XTX", "RX-7900-XTX"),
        ("AMD Radeon RX 7900 XTX", "RX-7900-XTX"),
        ("L20", "L20"),
        ("RTX 4000 Ada", "RTX-4000-Ada"),
        ("NVIDIA RTX 4000 Ada Generation", "RTX-4000-Ada"),
        ("RTX 5000 Ada Generation", "RTX-5000-Ada"),
        ("A2", "A2-16GB"),
        ("A16", "A16"),
        ("NVIDIA GH200 480GB", "GH200-96GB"),
    ],
)
def test_resolve(typed: str, expected: str) -> None:
    assert CATALOG.resolve(typed).name == expected


def test_normalized_names() -> None:
    assert normalize_gpu_name("NVIDIA GeForce RTX 4090") == "rtx4090"
    assert normalize_gpu_name("rtx-4090") == normalize_gpu_name("RTX_4090") == "rtx4090"
    assert normalize_gpu_name("NVIDIA") == "nvidia"


_SEPARATORS = st.sampled_from(["", " ", "-", "_", ".", "/", "  "])


@st.composite
def _mangled(draw: st.DrawFn) -> tuple[str, str]:
    gpu = draw(st.sampled_from(CATALOG.gpus))
    typed = draw(st.sampled_from((gpu.name, *gpu.aliases)))
    chars = []
    for ch in typed:
        ch = ch.upper() if draw(st.booleans()) else ch.lower()
        chars.append(ch if ch.isalnum() else draw(_SEPARATORS))
        if draw(st.integers(0, 9)) == 0:
            chars.append(draw(_SEPARATORS))
    return "".join(chars), gpu.name


@settings(max_examples=300, deadline=None)
@given(_mangled())
def test_resolution_ignores_case_and_punctuation(case: tuple[str, str]) -> None:
    typed, expected = case
    assert CATALOG.resolve(typed).name == expected


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(InputError) as info:
        CATALOG.resolve("H1OO")
    assert "did you mean" in (info.value.hint or "")
    assert "H100-SXM-80GB" in (info.value.hint or "")
    assert info.value.exit_code == EXIT_USAGE
    assert "H1OO" in str(info.value)


def test_unknown_name_without_close_ones_points_to_gpu_memory() -> None:
    with pytest.raises(InputError) as info:
        CATALOG.resolve("zzzzzzzzzzzz")
    assert "--gpu-memory" in (info.value.hint or "")


def test_get_and_contains() -> None:
    assert "h100" in CATALOG
    assert "no such card" not in CATALOG
    assert CATALOG.get("no such card") is None


# --------------------------------------------------------------------------------------------------
# Validation of catalog files (user files use the same schema)


_VALID_ENTRY = {
    "name": "My-Card-48GB",
    "aliases": ["my card"],
    "vendor": "other",
    "segment": "custom",
    "architecture": "unknown",
    "memory_gb": 48,
    "memory_bytes": 46068 * MiB,
    "memory_bytes_source": "https://example.invalid/nvidia-smi.txt",
    "interconnect": "PCIe 4.0 x16",
    "gpus_per_node": 8,
    "source": "https://example.invalid/datasheet.pdf",
}


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _entries_yaml(*entries: dict) -> str:
    return json.dumps({"schema_version": 1, "gpus": list(entries)})  # JSON is YAML


def test_spec_rejects_extra_keys() -> None:
    with pytest.raises(ValueError, match="memory_gib"):
        GpuSpec.model_validate({**_VALID_ENTRY, "memory_gib": 45})


def test_spec_is_frozen() -> None:
    spec = GpuSpec.model_validate(_VALID_ENTRY)
    with pytest.raises(ValueError):
        spec.memory_bytes = 1  # type: ignore[misc]


def test_extra_key_in_a_file_names_the_entry_and_field(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "gpus.yaml", _entries_yaml({**_VALID_ENTRY, "bandwith_gbps": 864}))
    with pytest.raises(InputError) as info:
        load_catalog(path)
    assert "My-Card-48GB" in str(info.value)
    assert "bandwith_gbps" in str(info.value)


def test_bad_value_in_a_file_names_the_entry_and_field(tmp_path: Path) -> None:
    path = _write_yaml(
        tmp_path / "gpus.yaml",
        _entries_yaml(_VALID_ENTRY, {**_VALID_ENTRY, "name": "B", "aliases": [], "gpus_per_node": 0}),
    )
    with pytest.raises(InputError) as info:
        load_catalog(path)
    assert "'B'" in str(info.value)
    assert "gpus_per_node" in str(info.value)


def test_entry_without_a_name_is_named_by_position(tmp_path: Path) -> None:
    entry = {k: v for k, v in _VALID_ENTRY.items() if k != "name"}
    path = _write_yaml(tmp_path / "gpus.yaml", _entries_yaml(entry))
    with pytest.raises(InputError, match=r"#1.*name"):
        load_catalog(path)


def test_memory_far_above_the_marketed_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="10%"):
        GpuSpec.model_validate({**_VALID_ENTRY, "memory_bytes": 60 * GB})


def test_clashing_aliases_are_rejected(tmp_path: Path) -> None:
    other = {**_VALID_ENTRY, "name": "Other-Card", "aliases": ["MY-CARD"]}
    path = _write_yaml(tmp_path / "gpus.yaml", _entries_yaml(_VALID_ENTRY, other))
    with pytest.raises(InputError, match="both answer to"):
        load_catalog(path)


def test_yaml_syntax_error_is_an_input_error_with_a_line(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "gpus.yaml", "gpus:\n  - name: [unclosed\n")
    with pytest.raises(InputError, match="line"):
        load_catalog(path)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_catalog(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping_or_list(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mapping"):
        load_catalog(_write_yaml(tmp_path / "gpus.yaml", "just a string\n"))


def test_user_file_of_custom_gpus_merges_over_the_bundled_catalog(tmp_path: Path) -> None:
    # A user file may be a bare list; an entry named like a bundled one replaces it.
    replaced_h100 = {
        **CATALOG.resolve("H100").model_dump(),
        "memory_bytes": 81000 * MiB,
        "memory_bytes_source": "https://example.invalid/our-h100s.txt",
    }
    text = json.dumps([_VALID_ENTRY, replaced_h100])
    merged = load_catalog(extra=[_write_yaml(tmp_path / "mine.yaml", text)])
    assert merged.resolve("my card").memory_bytes == 46068 * MiB
    assert merged.resolve("H100").memory_bytes == 81000 * MiB
    assert len(merged) == len(CATALOG) + 1
    assert CATALOG.resolve("H100").memory_bytes == 81559 * MiB  # the bundled catalog is untouched


def test_cache_sees_an_edited_file(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "gpus.yaml", _entries_yaml(_VALID_ENTRY))
    assert load_catalog(path).resolve("my card").memory_gb == 48
    import os

    _write_yaml(path, _entries_yaml({**_VALID_ENTRY, "memory_gb": 47, "memory_bytes": 44 * GB}))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_catalog(path).resolve("my card").memory_gb == 47


# --------------------------------------------------------------------------------------------------
# Custom GPUs (--gpu-memory)


def test_custom_gpu_from_a_size_string() -> None:
    gpu = custom_gpu("custom", "79.2GiB")
    assert gpu.memory_bytes == int(79.2 * GiB)
    assert gpu.memory_bytes_source == "user"
    assert gpu.bandwidth_gbps is None and gpu.bf16_tflops is None


def test_custom_gpu_from_bytes() -> None:
    assert custom_gpu("box", 24 * GiB).memory_bytes == 24 * GiB


def test_custom_gpu_over_a_known_card_keeps_its_other_figures() -> None:
    h100 = CATALOG.resolve("H100")
    gpu = custom_gpu("H100-SXM-80GB", "79GiB", base=h100)
    assert gpu.memory_bytes == 79 * GiB
    assert gpu.bandwidth_gbps == h100.bandwidth_gbps
    assert gpu.bf16_tflops == h100.bf16_tflops
    assert gpu.interconnect == h100.interconnect


def test_custom_gpu_larger_than_its_base_is_allowed() -> None:
    gpu = custom_gpu("bigger", "100GB", base=CATALOG.resolve("H100"))
    assert gpu.memory_bytes == 100 * GB


@pytest.mark.parametrize("bad", ["79.2 furlongs", "", "-5GB", "0GB"])
def test_custom_gpu_rejects_bad_sizes(bad: str) -> None:
    with pytest.raises(InputError):
        custom_gpu("custom", bad)


def test_custom_gpu_needs_a_name() -> None:
    with pytest.raises(InputError, match="name"):
        custom_gpu("  ", "80GB")


# --------------------------------------------------------------------------------------------------
# Matching probed devices to the catalog


def test_match_device_tells_variants_apart_by_memory() -> None:
    assert CATALOG.match_device("NVIDIA GeForce RTX 3080", 12 * GiB).name == "RTX-3080-12GB"
    assert CATALOG.match_device("NVIDIA GeForce RTX 3080", 10 * GiB).name == "RTX-3080-10GB"


def test_match_device_refuses_a_variant_the_catalog_lacks() -> None:
    # An 8 GB RTX 4060 Ti reports the same name as the 16 GB entry.
    assert CATALOG.match_device("NVIDIA GeForce RTX 4060 Ti", 8188 * MiB) is None
    assert CATALOG.match_device("NVIDIA GeForce RTX 4060 Ti", 16380 * MiB).name == "RTX-4060-Ti-16GB"


def test_match_device_unknown_name() -> None:
    assert CATALOG.match_device("NVIDIA RTX 6000D", 85651 * MiB) is None


# --------------------------------------------------------------------------------------------------
# NVML probe, replayed from recorded answers


def test_fixtures_are_sourced() -> None:
    assert len(FIXTURE_FILES) >= 4
    for path in FIXTURE_FILES:
        doc = _fixture(path)
        assert doc.get("source"), path.name
        assert doc.get("description"), path.name


@pytest.mark.parametrize("path", DEVICE_FIXTURES, ids=lambda p: p.stem)
def test_probe_replays_a_recorded_machine(path: Path) -> None:
    doc = _fixture(path)
    result = probe(ReplayBackend(doc), CATALOG)
    assert isinstance(result, ProbeResult)
    assert result.driver_version == doc["driver_version"]
    assert result.cuda_driver_version == doc["expect"]["cuda_driver_version"]
    assert result.device_count == len(doc["devices"])
    expected_names = doc["expect"]["catalog_names"]
    for device, recorded, expected in zip(result.devices, doc["devices"], expected_names, strict=True):
        assert device.name == recorded["name"]
        assert device.memory_total_bytes == recorded["memory"]["total"]
        assert device.memory_free_bytes == recorded["memory"]["free"]
        assert device.memory_used_bytes == recorded["memory"]["used"]
        assert device.memory_free_bytes + device.memory_used_bytes == device.memory_total_bytes
        assert device.catalog_name == expected

    specs = result.gpu_specs(CATALOG)
    assert [spec.memory_bytes for spec in specs] == [d["memory"]["total"] for d in doc["devices"]]
    for spec, expected in zip(specs, doc["expect"]["catalog_names"], strict=True):
        if expected is None:
            assert spec.segment == "custom"
        else:
            assert spec.name == expected
            assert spec.bandwidth_gbps == CATALOG.resolve(expected).bandwidth_gbps
        assert spec.memory_bytes_source.startswith("nvml:")


@pytest.mark.parametrize("path", DEVICE_FIXTURES, ids=lambda p: p.stem)
def test_recorded_totals_agree_with_the_catalog(path: Path) -> None:
    doc = _fixture(path)
    for recorded, expected in zip(doc["devices"], doc["expect"]["catalog_names"], strict=True):
        if expected is not None and CATALOG.resolve(expected).memory_is_measured:
            assert CATALOG.resolve(expected).memory_bytes == recorded["memory"]["total"]


def test_h200_cuda_total_is_nvml_total_minus_reserved() -> None:
    # What torch.cuda.mem_get_info()[1] (and so vLLM's total_gpu_memory) reported on the same machine.
    for name in ("h200.json", "h200x2.json"):
        doc = _fixture(FIXTURES / name)
        result = probe(ReplayBackend(doc), CATALOG)
        for device, torch_device in zip(result.devices, doc["torch"]["devices"], strict=True):
            assert device.memory_reserved_bytes == 644939776
            assert device.cuda_total_bytes == torch_device["mem_get_info_total"] == 150109880320
            assert device.memory_total_bytes == 143771 * MiB


def test_cuda_total_falls_back_to_the_nvml_total_without_a_reserved_figure() -> None:
    result = probe(ReplayBackend(_fixture(FIXTURES / "rtx4090x2.json")), CATALOG)
    assert result.devices[0].memory_reserved_bytes is None
    assert result.devices[0].cuda_total_bytes == 24564 * MiB


def test_no_driver_is_a_missing_dependency_without_traceback() -> None:
    doc = _fixture(FIXTURES / "no_driver.json")
    with pytest.raises(MissingDependencyError) as info:
        probe(ReplayBackend(doc), CATALOG)
    err = info.value
    assert doc["expect"]["error_contains"] in err.message
    assert "--gpu" in (err.hint or "")
    assert err.exit_code == EXIT_USAGE
    # Raised "from None": the CLI prints one line, and GPUPLAN_DEBUG has no NVML chain to show.
    assert err.__cause__ is None and err.__suppress_context__


def test_record_answers_round_trips_through_replay() -> None:
    doc = _fixture(FIXTURES / "h200x2.json")
    recorded = record_answers(ReplayBackend(doc), source="test")
    assert recorded["devices"] == doc["devices"]
    assert probe(ReplayBackend(recorded), CATALOG) == probe(ReplayBackend(doc), CATALOG)


def test_record_answers_stores_an_unavailable_driver() -> None:
    recorded = record_answers(ReplayBackend(_fixture(FIXTURES / "no_driver.json")))
    assert recorded["error"]["kind"] == "library_not_found"
    assert "devices" not in recorded


def test_replay_backend_reads_a_file() -> None:
    backend = ReplayBackend.from_file(FIXTURES / "a10x3.json")
    backend.init()
    assert backend.device_count() == 3


def test_replay_backend_reports_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError):
        ReplayBackend.from_file(bad)


# --------------------------------------------------------------------------------------------------
# PynvmlBackend against a stand-in pynvml module (no GPU here)


class _NVMLError(Exception):
    pass


def _fake_pynvml() -> types.ModuleType:
    module = types.ModuleType("pynvml")

    class NVMLError_LibraryNotFound(_NVMLError):  # noqa: N801 - pynvml's naming
        pass

    class NVMLError_DriverNotLoaded(_NVMLError):  # noqa: N801
        pass

    class _Memory:
        def __init__(self, **fields: int) -> None:
            self.__dict__.update(fields)

    def get_memory_info(handle: int, version: object = None) -> _Memory:
        if version is module.nvmlMemory_v2:
            return _Memory(total=143771 * MiB, reserved=644939776, free=150109880320, used=0)
        return _Memory(total=143771 * MiB, free=150109880320, used=644939776)

    module.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    module.NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    module.nvmlMemory_v2 = object()
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlSystemGetDriverVersion = lambda: b"580.159.04"  # old bindings returned bytes
    module.nvmlSystemGetCudaDriverVersion = lambda: 13000
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetName = lambda handle: "NVIDIA H200"
    module.nvmlDeviceGetMemoryInfo = get_memory_info
    return module


def test_pynvml_backend_reads_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    result = probe(PynvmlBackend(), CATALOG)
    assert result.driver_version == "580.159.04"
    assert result.cuda_driver_version == "13.0"
    (device,) = result.devices
    assert device.catalog_name == "H200-SXM-141GB"
    assert device.memory_reserved_bytes == 644939776
    assert device.cuda_total_bytes == 150109880320


@pytest.mark.parametrize(
    ("error_class", "message"),
    [("NVMLError_LibraryNotFound", "driver library"), ("NVMLError_DriverNotLoaded", "not loaded")],
)
def test_pynvml_backend_maps_driver_errors(
    monkeypatch: pytest.MonkeyPatch, error_class: str, message: str
) -> None:
    module = _fake_pynvml()

    def fail() -> None:
        raise getattr(module, error_class)("from the driver")

    module.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", module)
    with pytest.raises(MissingDependencyError, match=message):
        probe(PynvmlBackend(), CATALOG)


def test_pynvml_backend_maps_an_unknown_nvml_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _fake_pynvml()

    def fail(handle: int) -> str:
        raise _NVMLError("Unknown Error")

    module.nvmlDeviceGetName = fail
    monkeypatch.setitem(sys.modules, "pynvml", module)
    with pytest.raises(MissingDependencyError, match="Unknown Error"):
        probe(PynvmlBackend(), CATALOG)


def test_missing_nvidia_ml_py_is_a_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(MissingDependencyError, match="nvidia-ml-py"):
        probe(PynvmlBackend(), CATALOG)


def test_unavailable_carries_its_kind() -> None:
    exc = NvmlUnavailable("no_permission", "Insufficient Permissions")
    assert exc.kind == "no_permission" and "Insufficient" in str(exc)


def test_catalog_built_in_memory() -> None:
    one = GpuCatalog([GpuSpec.model_validate(_VALID_ENTRY)])
    assert one.resolve("MY-CARD").name == "My-Card-48GB"
    assert "1 GPUs" in repr(one)
