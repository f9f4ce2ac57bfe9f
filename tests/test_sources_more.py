"""More model sources through the resolver, the library and the CLI: ModelScope (a fake served over real
HTTP), GGUF files with --engine llama.cpp, and the safetensors headers (or pickles) beside a config.json."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelscope_server import FakeModelScope
from test_gguf import TINY, llama3_8b, llama_like
from typer.testing import CliRunner

import gpuplan
from gpuplan.cli.app import app
from gpuplan.errors import HubUnavailableError, InputError, ModelNotFoundError
from gpuplan.models.catalog import load_catalog
from gpuplan.models.sources import resolve_model
from gpuplan.units import MiB

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


# --- ModelScope ---------------------------------------------------------------------------------------

QWEN_CONFIG = json.loads(load_catalog().get("Qwen/Qwen2.5-7B-Instruct").path.read_text())


@pytest.fixture
def ms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModelScope]:
    """A started fake ModelScope, MODELSCOPE_ENDPOINT pointing at it, the cache in a temporary folder."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
    monkeypatch.delenv("MODELSCOPE_DOMAIN", raising=False)
    monkeypatch.delenv("GPUPLAN_HUB_TIMEOUT", raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    with FakeModelScope(slow_s=5.0) as server:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.url)
        yield server


def test_modelscope_prefix_through_the_resolver(ms: FakeModelScope) -> None:
    ms.add("my-org/Qwen-Mirror", {"config.json": QWEN_CONFIG})

    resolved = resolve_model("modelscope:my-org/Qwen-Mirror")

    assert resolved.source == "modelscope"
    assert resolved.id == "my-org/Qwen-Mirror"
    assert resolved.location == (f"{ms.url}/api/v1/models/my-org/Qwen-Mirror/repo?Revision=master"
                                 "&FilePath=config.json")
    assert resolved.spec.parameters == resolve_model("Qwen/Qwen2.5-7B-Instruct").spec.parameters
    assert resolved.published_parameters is None  # not the catalog's id
    [request] = ms.requests
    assert request.query["FilePath"] == ["config.json"]

    # Offline, the copy kept by the first call answers.
    cached = resolve_model("modelscope:my-org/Qwen-Mirror", offline=True)
    assert cached.source == "modelscope-cache"
    assert len(ms.requests) == 1


def test_modelscope_source_and_revision_through_the_cli(ms: FakeModelScope) -> None:
    ms.add("my-org/Qwen-Mirror", {"config.json": {"model_type": "nonsense"}},
           revisions={"v1.0": {"config.json": QWEN_CONFIG}})

    result = run("estimate", "my-org/Qwen-Mirror@v1.0", "--source", "modelscope", "--dtype", "bf16",
                 "--seq", "4096", "--format", "json")

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["source"], data["model"], data["revision"]) == ("modelscope", "my-org/Qwen-Mirror", "v1.0")
    assert data["model_type"] == "qwen2"
    assert ms.requests[-1].query["Revision"] == ["v1.0"]


def test_modelscope_unreachable_falls_back_to_the_bundled_copy(ms: FakeModelScope) -> None:
    ms.add("Qwen/Qwen2.5-7B-Instruct", {"config.json": QWEN_CONFIG}, mode="error")

    result = run("estimate", "modelscope:Qwen/Qwen2.5-7B-Instruct", "--format", "json")

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source"] == "catalog"
    assert any("ModelScope could not be reached" in n and "bundled copy" in n for n in data["notes"])


def test_modelscope_unreachable_without_a_bundled_copy_exits_3(ms: FakeModelScope) -> None:
    ms.add("my-org/Qwen-Mirror", {"config.json": QWEN_CONFIG}, mode="error")

    with pytest.raises(HubUnavailableError):
        resolve_model("modelscope:my-org/Qwen-Mirror")
    result = run("estimate", "modelscope:my-org/Qwen-Mirror")
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: server error at")


def test_modelscope_prefix_conflicts_with_another_source() -> None:
    with pytest.raises(InputError, match="names a ModelScope model"):
        resolve_model("modelscope:Qwen/Qwen2.5-7B-Instruct", source="hub")
    result = run("estimate", "modelscope:", "--source", "modelscope")
    assert result.exit_code == 2


# --- GGUF and llama.cpp -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A sparse file: the header of Meta-Llama-3-8B in Q4_0, the data section a hole (tests/test_gguf.py).
    return llama3_8b(tmp_path_factory.mktemp("gguf"))


def test_gguf_through_the_cli_matches_llamacpp_logs(llama3_gguf: Path) -> None:
    # llama.cpp 0c1e570 on an H200 with -c 32768 -fa on -ngl 17 logged 2154.33 MiB of GPU weights,
    # 2048 MiB of KV cache on the GPU and 2048 in host memory, a 258.50 MiB compute buffer, and nvidia-smi
    # read 5059 MiB (docs/gguf.md, tests/test_gguf.py: MEASURED row a10).
    result = run("estimate", str(llama3_gguf), "--engine", "llama.cpp", "-ngl", "17", "-c", "32768",
                 "-fa", "on", "--gpu", "H100", "--format", "json")

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["engine"], data["source"]) == ("llama.cpp", "local")
    assert (data["dtype"], data["kv_dtype"]) == ("Q4_0", "f16")
    assert data["weights_bytes"] / MiB == pytest.approx(2154.33, abs=0.006)
    assert data["kv_cache_bytes"] == 2048 * MiB
    assert data["components"]["kv_host"] == 2048 * MiB
    assert data["activation_bytes"] == pytest.approx(258.50 * MiB, abs=0.02 * MiB)
    assert data["overhead_bytes"] == 597 * MiB
    gpu_parts = data["weights_bytes"] + data["kv_cache_bytes"] + data["activation_bytes"]
    assert data["peak_allocated_bytes"] == gpu_parts
    assert data["total_bytes"] == data["peak_allocated_bytes"] + data["overhead_bytes"]
    assert data["total_bytes"] / MiB == pytest.approx(5059, abs=3)
    run_ = data["llamacpp"]
    assert run_["host_kv_bytes"] == 2048 * MiB
    assert run_["host_weights_bytes"] == data["components"]["weights_host"] > 0
    host_parts = ("host_weights_bytes", "host_kv_bytes", "host_compute_bytes", "host_output_bytes")
    assert run_["host_bytes"] == sum(run_[k] for k in host_parts)
    assert data["llamacpp"]["layers_on_gpu"] == 16 and data["llamacpp"]["output_on_gpu"] is True
    assert (data["batch"], data["seq"], data["llamacpp"]["n_ctx"]) == (1, 32768, 32768)
    assert data["fits"] is True and data["gpu_memory_bytes"] - data["total_bytes"] == data["headroom_bytes"]


def test_gguf_table_shows_the_host_part_only_when_layers_stay_on_the_host(llama3_gguf: Path) -> None:
    partial = run("estimate", str(llama3_gguf), "-ngl", "17", "-c", "32k")
    full = run("estimate", str(llama3_gguf), "-c", "32k")

    assert partial.exit_code == 0 and full.exit_code == 0, partial.output + full.output
    assert "16/32 layers + output layer on the GPU" in partial.stdout
    assert " host (CPU RAM) " in partial.stdout
    assert " host (CPU RAM) " not in full.stdout
    assert "32/32 layers + output layer on the GPU" in full.stdout


def test_seq_is_tokens_per_slot_and_sweeps(llama3_gguf: Path) -> None:
    result = run("estimate", str(llama3_gguf), "--seq", "4k,32k", "-np", "auto", "--format", "json")

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # llama-server's auto: 4 slots sharing one unified cache of 4 x --seq cells; each may use all of it.
    assert [d["llamacpp"]["n_ctx"] for d in data] == [4 * 4096, 4 * 32768]
    assert [d["batch"] for d in data] == [4, 4] and all(d["llamacpp"]["kv_unified"] for d in data)
    assert [d["kv_cache_bytes"] for d in data] == [2048 * MiB, 16384 * MiB]


def test_batch_is_parallel_slots_of_seq_tokens(llama3_gguf: Path) -> None:
    result = run("estimate", str(llama3_gguf), "--batch", "2", "--seq", "8k", "--format", "json")

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["batch"] == 2 and data["seq"] == 8192 and data["llamacpp"]["n_ctx"] == 16384


def test_gguf_folder_and_library_facade(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    path = llama_like(folder / "tiny-Q8_0.gguf", weight_type=8, **TINY)
    (folder / "mmproj-tiny.gguf").write_bytes(b"projector, never read")

    resolved = resolve_model(str(folder))
    assert resolved.source == "local" and resolved.location == str(path)
    assert "gguf" not in resolved.model_dump() and "gguf=" not in repr(resolved)

    r = gpuplan.estimate(resolved, ctx_size=256)
    assert r.engine == "llama.cpp"  # the default for a GGUF model
    assert r.weights_bytes + r.components["weights_host"] == resolved.gguf.weights_bytes
    assert r.components["weights_host"] == _tensor_bytes(path, "token_embd.weight")
    with pytest.raises(InputError, match="reads a .gguf file"):
        gpuplan.estimate("llama-2-7b", engine="llama.cpp")
    with pytest.raises(InputError, match="n_gpu_layers applies to the llama.cpp engine only"):
        gpuplan.estimate("llama-2-7b", n_gpu_layers=3)


def _tensor_bytes(path: Path, name: str) -> int:
    from gpuplan.models.gguf import read_gguf

    [file] = read_gguf(path)
    return next(t.nbytes for t in file.tensors if t.name == name)


@pytest.mark.parametrize(
    "args",
    [
        ("llama-2-7b", "-ngl", "10"),
        ("llama-2-7b", "--engine", "vllm", "--gpu", "H100", "--cache-type-k", "q8_0"),
        ("llama-2-7b", "--engine", "transformers", "--no-kv-offload"),
        ("llama-2-7b", "--ctx-size", "4096"),
        ("llama-2-7b", "--engine", "llama.cpp"),
    ],
)
def test_llamacpp_flags_need_the_llamacpp_engine(args: tuple[str, ...]) -> None:
    result = run("estimate", *args)
    assert result.exit_code == 2, result.output
    assert "llama.cpp" in result.stderr and "Traceback" not in result.output


def test_llamacpp_rejects_flags_it_does_not_take(llama3_gguf: Path) -> None:
    for extra, message in ((("--dtype", "fp16"), "own types"), (("--batch", "2", "-np", "4"), "--parallel"),
                           (("-ngl", "auto"), "number or all"), (("-c", "4k", "--seq", "4k"), "not both")):
        result = run("estimate", str(llama3_gguf), *extra)
        assert result.exit_code == 2, result.output
        assert message in result.stderr


def test_missing_gguf_file_exits_3(tmp_path: Path) -> None:
    result = run("estimate", "model-Q4_K_M.gguf")
    assert result.exit_code == 3
    assert "no such file" in result.stderr


# --- safetensors headers and pickles beside a local config -------------------------------------------

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 128,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
# Its tensors as a checkpoint would store them: matrices in BF16, the norms kept in F32.
TINY_TENSORS = {
    "model.embed_tokens.weight": ("BF16", [128, 64]),
    "model.layers.0.self_attn.q_proj.weight": ("BF16", [64, 64]),
    "model.layers.0.self_attn.k_proj.weight": ("BF16", [64, 64]),
    "model.layers.0.self_attn.v_proj.weight": ("BF16", [64, 64]),
    "model.layers.0.self_attn.o_proj.weight": ("BF16", [64, 64]),
    "model.layers.0.mlp.gate_proj.weight": ("BF16", [128, 64]),
    "model.layers.0.mlp.up_proj.weight": ("BF16", [128, 64]),
    "model.layers.0.mlp.down_proj.weight": ("BF16", [64, 128]),
    "model.layers.0.input_layernorm.weight": ("F32", [64]),
    "model.layers.0.post_attention_layernorm.weight": ("F32", [64]),
    "model.norm.weight": ("F32", [64]),
    "lm_head.weight": ("BF16", [128, 64]),
}
TINY_PARAMETERS = 57_536
TINY_STORED_BYTES = 2 * (TINY_PARAMETERS - 3 * 64) + 4 * 3 * 64


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """The format of https://huggingface.co/docs/safetensors/index#format, data zero-filled."""
    size = {"BF16": 2, "F32": 4}
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = size[dtype] * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_local_safetensors_give_exact_weight_bytes(write_config) -> None:
    folder = write_config(TINY_LLAMA)
    write_safetensors(folder / "model.safetensors", TINY_TENSORS)

    resolved = resolve_model(str(folder))
    assert resolved.spec.parameters == TINY_PARAMETERS
    assert resolved.safetensors_parameters == {"BF16": TINY_PARAMETERS - 192, "F32": 192}

    result = run("estimate", str(folder), "--seq", "64", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["weights_bytes"] == TINY_STORED_BYTES != 2 * TINY_PARAMETERS
    assert any("safetensors headers" in n for n in data["notes"])


def test_a_broken_safetensors_header_is_a_notice(write_config) -> None:
    folder = write_config(TINY_LLAMA)
    write_safetensors(folder / "model.safetensors", TINY_TENSORS)
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)  # an interrupted download

    result = run("estimate", str(folder), "--seq", "64", "--format", "json")

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["weights_bytes"] == 2 * TINY_PARAMETERS  # from the config: bf16
    assert any("could not be read" in n and "truncated" in n for n in data["notes"])


class _Trap:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_weights_are_never_opened(write_config, tmp_path: Path) -> None:
    folder = write_config(TINY_LLAMA)
    marker = tmp_path / "unpickled"
    weights = folder / "pytorch_model.bin"
    weights.write_bytes(pickle.dumps(_Trap(marker)))
    before = weights.read_bytes()

    resolved = resolve_model(str(folder))
    result = run("estimate", str(folder), "--seq", "64")

    assert resolved.safetensors_parameters is None
    assert any("pytorch_model.bin" in n and "never opens" in n for n in resolved.notices)
    assert result.exit_code == 0, result.output
    assert "never opens" in result.stderr
    assert not marker.exists() and weights.read_bytes() == before


def test_missing_index_shards_are_a_notice(write_config) -> None:
    folder = write_config(TINY_LLAMA)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}))

    resolved = resolve_model(str(folder))

    assert resolved.safetensors_parameters is None
    assert any("missing" in n for n in resolved.notices)
    with pytest.raises(ModelNotFoundError):
        resolve_model(str(folder / "nope.gguf"))
