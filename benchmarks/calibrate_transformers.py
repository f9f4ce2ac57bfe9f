"""Measure peak GPU memory of transformers ``generate()`` over a matrix of models, dtypes and shapes.

Each case appends one JSON line to ``--out`` (flushed at once, so a run cut short keeps what it measured). The
lines become the fixtures in ``tests/fixtures/measurements/`` that gpuplan's estimates are checked against.

    python3 benchmarks/calibrate_transformers.py --matrix full --out $OUT/transformers-h200.jsonl

Needs torch, transformers and a CUDA GPU; it imports nothing from gpuplan but ``gpuplan/verify/measure.py``,
which it loads by path so that gpuplan's own dependencies need not be installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NEW_TOKENS = 16
LONG_PROMPT = 4000
SHORT_PROMPT = 512


def _load_measure() -> Any:
    path = REPO / "gpuplan" / "verify" / "measure.py"
    spec = importlib.util.spec_from_file_location("gpuplan_verify_measure", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Case grids: (attention, batch, prompt). "long" becomes min(4000, max positions - new tokens).
FULL = [
    (attn, batch, prompt) for attn in ("sdpa", "eager") for batch in (1, 8) for prompt in ("short", "long")
]
LITE = [("sdpa", 1, "short"), ("sdpa", 8, "short"), ("eager", 8, "short"), ("sdpa", 8, "long")]
MIN = [("sdpa", 1, "short"), ("sdpa", 8, "long")]
SHORT_ONLY = [("sdpa", 1, "short"), ("sdpa", 8, "short")]


@dataclass
class Group:
    """One (model, dtype): built once, then every case of its grid runs on it."""

    model_id: str
    files: list[str]  # candidates in data/models, first found wins
    dtype: str
    grid: list[tuple[str, int, str]]
    features: list[str] = field(default_factory=list)
    repeat: tuple[str, int, str] | None = None  # one case run twice in a row, to show determinism
    # Changes to the config before building (None removes a key); recorded in every line and in the model id.
    overrides: dict[str, Any] = field(default_factory=dict)


# Cheapest groups first: small weights, and bf16/fp16 before fp32 (fp32 matmuls run without TF32 by default).
MATRIX = [
    Group(
        "openai-community/gpt2",
        ["openai-community--gpt2.json"],
        "bf16",
        FULL,
        ["mha", "gpt2-style", "learned-positions", "tied-embeddings"],
    ),
    Group(
        "Qwen/Qwen3-0.6B",
        ["Qwen--Qwen3-0.6B.json"],
        "bf16",
        FULL,
        ["gqa", "explicit-head-dim", "tied-embeddings", "qk-norm"],
    ),
    Group(
        "google/gemma-3-1b-it",
        ["google--gemma-3-1b-it.json"],
        "bf16",
        FULL,
        ["mqa", "sliding-window-512", "explicit-head-dim", "tied-embeddings"],
    ),
    Group(
        "meta-llama/Llama-3.2-1B",
        ["meta-llama--Llama-3.2-1B.json", "meta-llama--Llama-3.2-1B-Instruct.json"],
        "bf16",
        FULL,
        ["gqa", "explicit-head-dim", "tied-embeddings"],
        repeat=("sdpa", 8, "long"),
    ),
    Group(
        "facebook/opt-1.3b",
        ["facebook--opt-1.3b.json"],
        "fp16",
        FULL,
        ["mha", "learned-positions", "tied-embeddings"],
    ),
    Group(
        "EleutherAI/pythia-1.4b",
        ["EleutherAI--pythia-1.4b.json", "EleutherAI--pythia-1.4b-deduped.json"],
        "fp16",
        FULL,
        ["mha", "gpt-neox", "partial-rotary"],
    ),
    Group(
        "Qwen/Qwen2.5-1.5B",
        ["Qwen--Qwen2.5-1.5B.json", "Qwen--Qwen2.5-1.5B-Instruct.json"],
        "bf16",
        FULL,
        ["gqa", "qkv-bias", "tied-embeddings"],
    ),
    Group(
        "Qwen/Qwen3-1.7B",
        ["Qwen--Qwen3-1.7B.json"],
        "bf16",
        FULL,
        ["gqa", "explicit-head-dim", "tied-embeddings"],
    ),
    Group(
        "openai-community/gpt2",
        ["openai-community--gpt2.json"],
        "fp16",
        LITE,
        ["mha", "gpt2-style", "learned-positions", "tied-embeddings"],
    ),
    Group(
        "meta-llama/Llama-3.2-1B",
        ["meta-llama--Llama-3.2-1B.json", "meta-llama--Llama-3.2-1B-Instruct.json"],
        "fp16",
        MIN,
        ["gqa", "explicit-head-dim", "tied-embeddings"],
    ),
    Group(
        "openai-community/gpt2",
        ["openai-community--gpt2.json"],
        "fp32",
        FULL,
        ["mha", "gpt2-style", "learned-positions", "tied-embeddings"],
    ),
    Group(
        "Qwen/Qwen3-0.6B",
        ["Qwen--Qwen3-0.6B.json"],
        "fp32",
        LITE,
        ["gqa", "explicit-head-dim", "tied-embeddings", "qk-norm"],
    ),
    Group(
        "google/gemma-3-1b-it",
        ["google--gemma-3-1b-it.json"],
        "fp32",
        LITE,
        ["mqa", "sliding-window-512", "explicit-head-dim", "tied-embeddings"],
    ),
    Group(
        "google/gemma-2-2b",
        ["google--gemma-2-2b.json", "google--gemma-2-2b-it.json"],
        "bf16",
        FULL,
        ["gqa", "sliding-window-4096-alternating", "explicit-head-dim", "softcapping", "tied-embeddings"],
    ),
    Group(
        "meta-llama/Llama-3.2-1B",
        ["meta-llama--Llama-3.2-1B.json", "meta-llama--Llama-3.2-1B-Instruct.json"],
        "fp32",
        LITE,
        ["gqa", "explicit-head-dim", "tied-embeddings"],
    ),
    Group(
        "facebook/opt-1.3b",
        ["facebook--opt-1.3b.json"],
        "fp32",
        LITE,
        ["mha", "learned-positions", "tied-embeddings"],
    ),
    Group(
        "EleutherAI/pythia-1.4b",
        ["EleutherAI--pythia-1.4b.json", "EleutherAI--pythia-1.4b-deduped.json"],
        "fp32",
        LITE,
        ["mha", "gpt-neox", "partial-rotary"],
    ),
    Group(
        "microsoft/Phi-3-mini-4k-instruct",
        ["microsoft--Phi-3-mini-4k-instruct.json"],
        "bf16",
        FULL,
        ["mha", "fused-qkv", "sliding-window-2047"],
    ),
    Group(
        "allenai/OLMoE-1B-7B-0924",
        ["allenai--OLMoE-1B-7B-0924.json", "allenai--OLMoE-1B-7B-0924-Instruct.json"],
        "bf16",
        FULL,
        ["moe", "mha", "qk-norm"],
    ),
    Group("meta-llama/Llama-2-7b-hf", ["meta-llama--Llama-2-7b-hf.json"], "fp16", FULL, ["mha", "dense"]),
    Group(
        "mistralai/Mistral-7B-v0.1",
        ["mistralai--Mistral-7B-v0.1.json"],
        "bf16",
        FULL,
        ["gqa", "sliding-window-4096"],
    ),
    Group(
        "tiiuae/falcon-7b",
        ["tiiuae--falcon-7b.json", "tiiuae--falcon-7b-instruct.json"],
        "bf16",
        FULL,
        ["mqa", "parallel-attention"],
    ),
    Group("meta-llama/Llama-2-7b-hf", ["meta-llama--Llama-2-7b-hf.json"], "bf16", MIN, ["mha", "dense"]),
    Group(
        "Qwen/Qwen1.5-MoE-A2.7B",
        ["Qwen--Qwen1.5-MoE-A2.7B.json", "Qwen--Qwen1.5-MoE-A2.7B-Chat.json"],
        "bf16",
        FULL,
        ["moe", "shared-expert", "mha", "qkv-bias"],
    ),
    Group(
        "deepseek-ai/DeepSeek-V2-Lite",
        ["deepseek-ai--DeepSeek-V2-Lite.json", "deepseek-ai--DeepSeek-V2-Lite-Chat.json"],
        "bf16",
        FULL,
        ["mla", "moe", "shared-expert"],
    ),
    Group(
        "meta-llama/Llama-2-7b-hf", ["meta-llama--Llama-2-7b-hf.json"], "fp32", SHORT_ONLY, ["mha", "dense"]
    ),
    Group(
        "bigcode/gpt_bigcode-santacoder",
        ["bigcode--gpt_bigcode-santacoder.json"],
        "bf16",
        FULL,
        ["mqa", "gpt-bigcode", "learned-positions", "tied-embeddings"],
    ),
    Group(
        "bigcode/starcoder2-7b", ["bigcode--starcoder2-7b.json"], "bf16", FULL, ["gqa", "sliding-window-4096"]
    ),
    # MLA and MoE at full width but only 4 layers (3 dense, 1 MoE: first_k_dense_replace is 3), so that the
    # 671B model fits; quantization_config (fp8 blocks) is dropped so the weights are plain bf16.
    Group(
        "deepseek-ai/DeepSeek-V3",
        ["deepseek-ai--DeepSeek-V3.json"],
        "bf16",
        FULL,
        ["mla", "moe", "shared-expert", "cut-down"],
        overrides={"num_hidden_layers": 4, "quantization_config": None},
    ),
]

SMOKE = [
    Group(
        "openai-community/gpt2",
        ["openai-community--gpt2.json"],
        "bf16",
        [("sdpa", 1, "short")],
        ["mha", "gpt2-style", "learned-positions", "tied-embeddings"],
    ),
    Group(
        "Qwen/Qwen3-0.6B",
        ["Qwen--Qwen3-0.6B.json"],
        "bf16",
        [("eager", 1, "short")],
        ["gqa", "explicit-head-dim", "tied-embeddings", "qk-norm"],
    ),
]


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    changed = dict(raw)
    for key, value in overrides.items():
        if value is None:
            changed.pop(key, None)
        else:
            changed[key] = value
    return changed


def find_config(models_dir: Path, group: Group) -> Path | None:
    for name in group.files:
        path = models_dir / name
        if path.is_file():
            return path
    return None


def prompt_length(kind: str, max_positions: int | None, new_tokens: int) -> tuple[int, str | None]:
    """The prompt for a grid entry, capped so that prompt + new tokens fit the model's positions."""
    wanted = SHORT_PROMPT if kind == "short" else LONG_PROMPT
    if max_positions is not None and wanted + new_tokens > max_positions:
        return max_positions - new_tokens, f"capped from {wanted} by max positions {max_positions}"
    return wanted, None


def case_id(model_id: str, dtype: str, attn: str, batch: int, prompt: int, new_tokens: int) -> str:
    return f"{model_id}|{dtype}|{attn}|b{batch}|p{prompt}|n{new_tokens}"


def emit(handle: Any, record: dict[str, Any]) -> None:
    handle.write(json.dumps(record, sort_keys=True) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def check_builds(measure: Any, groups: list[Group], models_dir: Path, layers: int = 2) -> None:
    """Build a cut-down copy (``layers`` layers) of each distinct model and generate a few tokens with both
    attention implementations, to catch config and API problems before the long run. Prints one line each."""
    torch = measure._torch()
    done: set[str] = set()
    for group in groups:
        if group.model_id in done:
            continue
        done.add(group.model_id)
        path = find_config(models_dir, group)
        if path is None:
            print(f"CHECK {group.model_id}: no config among {group.files}", flush=True)
            continue
        raw = apply_overrides(json.loads(path.read_text()), group.overrides)
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if key in raw:
                raw[key] = layers
        if isinstance(raw.get("layer_types"), list):
            raw["layer_types"] = raw["layer_types"][:layers]
        status = []
        model = None
        try:
            model, info = measure.build_model(raw, group.dtype, "sdpa")
            for attn in ("sdpa", "eager"):
                switched = measure.set_attention(model, attn)
                result = measure.measure_generate(model, 1, 64, 2)
                status.append(
                    f"{attn}:switch={switched}:gen={result.get('generated_tokens')}:"
                    f"kv={result.get('kv_cache_bytes')}:{result.get('kv_cache_layer_classes')}"
                )
            status.append(
                f"type={info['model_type']} class={info['model_class']} "
                f"maxpos={info['max_position_embeddings']} "
                f"tied={info['tied_word_embeddings']} buffers={info['buffer_bytes_by_name']} "
                f"experts={info['experts_implementation']} notes={info['config_notes']} "
                f"gen_cfg_cache={getattr(model.generation_config, 'cache_implementation', None)}"
            )
            print(f"CHECK {group.model_id}: OK " + " ".join(status), flush=True)
        except Exception as error:  # a report line per model is the point of this check
            print(
                f"CHECK {group.model_id}: FAIL {type(error).__name__}: {str(error)[:400]} | {status}",
                flush=True,
            )
        finally:
            model = None
            measure._clear_cuda()
    del torch


def done_case_ids(paths: list[Path]) -> set[str]:
    ids: set[str] = set()
    for path in paths:
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    ids.add(json.loads(line)["case_id"])
    return ids


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    measure = _load_measure()
    # Only the context measurement needs a process that has not touched CUDA yet; do it before anything else.
    context = measure.init_cuda(0)
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)

    env = measure.environment(0)
    print("ENV", json.dumps(env), flush=True)
    print("CONTEXT", json.dumps(context), flush=True)
    models_dir = Path(args.models_dir)
    groups = SMOKE if args.matrix == "smoke" else MATRIX
    if args.check_builds:
        check_builds(measure, MATRIX, models_dir)
        print(f"CHECK done at {time.monotonic() - started:.1f}s", flush=True)
    skip = done_case_ids([Path(p) for p in args.skip_done])
    nvml = measure.Nvml(0)
    out = open(args.out, "a", encoding="utf-8")
    errors = open(args.errors, "a", encoding="utf-8")
    left: list[str] = []
    for group in groups:
        path = find_config(models_dir, group)
        if path is None:
            print(f"SKIP {group.model_id} {group.dtype}: no config among {group.files}", flush=True)
            continue
        raw = apply_overrides(json.loads(path.read_text()), group.overrides)
        config, _notes = measure.load_config(raw)
        model_id = path.stem.replace("--", "/", 1)
        if group.overrides:
            model_id += "[" + ",".join(f"{k}={v}" for k, v in sorted(group.overrides.items())) + "]"
        cases = plan_cases(group, model_id, measure.max_positions(config))
        todo = [case for case in cases if case["case_id"] not in skip]
        if not todo:
            continue
        if time.monotonic() - started > args.time_budget_s:
            left.extend(case["case_id"] for case in todo)
            continue
        runner = GroupRunner(measure, raw, group, errors)
        for case in todo:
            if time.monotonic() - started > args.time_budget_s:
                left.append(case["case_id"])
                continue
            attn = case["attn"]
            model = None  # a rebuild inside ensure() must not find the previous model still referenced
            if not runner.ensure(attn):
                continue
            model, build = runner.model, runner.build
            record: dict[str, Any] = {
                "case_id": case["case_id"],
                "run": args.run_label,
                "repeat_index": case["repeat_index"],
                "model_id": model_id,
                "config_file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
                "features": group.features,
                "config_overrides": group.overrides,
                "dtype": group.dtype,
                "attn": attn,
                "prompt_kind": case["prompt_kind"],
                "prompt_note": case["prompt_note"],
            }
            record.update({k: v for k, v in build.items() if k != "attn_implementation"})
            record["attn_switched_on_loaded_model"] = runner.switched
            record["attn_implementation_used"] = getattr(model.config, "_attn_implementation", None)
            record["cache_implementation"] = getattr(model.generation_config, "cache_implementation", None)
            record["cuda_context_bytes"] = context["cuda_context_bytes"]
            record["context"] = context
            record["versions"] = env
            case_started = time.monotonic()
            try:
                record.update(
                    measure.measure_generate(
                        model, case["batch"], case["prompt"], NEW_TOKENS, seed=0, nvml=nvml
                    )
                )
            except Exception as error:
                record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
                emit(errors, record)
                print("CASE-FAIL", record["case_id"], record["error"], flush=True)
                measure._clear_cuda()
                continue
            record["case_seconds"] = round(time.monotonic() - case_started, 3)
            emit(out, record)
            print(
                f"CASE {record['case_id']} oom={record['oom']} peak={record.get('peak_allocated')} "
                f"prefill={record.get('prefill_peak_allocated')} kv={record.get('kv_cache_bytes')} "
                f"in {record['case_seconds']}s t={time.monotonic() - started:.1f}s",
                flush=True,
            )
        # The loop's own reference would otherwise keep this model alive while the next one is built.
        model = None
        runner.release()
    out.close()
    errors.close()
    if left:
        print(f"LEFT {len(left)} (time budget reached): " + json.dumps(left), flush=True)
    print(f"DONE in {time.monotonic() - started:.1f}s", flush=True)
    return 0


def plan_cases(group: Group, model_id: str, max_positions: int | None) -> list[dict[str, Any]]:
    """The group's cases in run order: sdpa before eager, cheap shapes first, the repeated case twice."""
    grid = sorted(group.grid, key=lambda c: (c[0] != "sdpa", c[1] * (1 if c[2] == "short" else 8)))
    if group.repeat is not None:
        grid.insert(grid.index(group.repeat) + 1, group.repeat)
    cases: list[dict[str, Any]] = []
    seen: set[str] = set()
    for attn, batch, kind in grid:
        prompt, note = prompt_length(kind, max_positions, NEW_TOKENS)
        cid = case_id(model_id, group.dtype, attn, batch, prompt, NEW_TOKENS)
        repeat_index = 2 if cid in seen else 1
        seen.add(cid)
        cases.append(
            {
                "case_id": cid if repeat_index == 1 else f"{cid}#{repeat_index}",
                "repeat_index": repeat_index,
                "attn": attn,
                "batch": batch,
                "prompt": prompt,
                "prompt_kind": kind,
                "prompt_note": note,
            }
        )
    return cases


class GroupRunner:
    """The built model of one group: attention is switched in place, or rebuilt where transformers cannot."""

    def __init__(self, measure: Any, raw: dict[str, Any], group: Group, errors: Any) -> None:
        self.measure, self.raw, self.group, self.errors = measure, raw, group, errors
        self.model: Any = None
        self.build: dict[str, Any] = {}
        self.switched = False
        self.unsupported: dict[str, str] = {}

    def ensure(self, attn: str) -> bool:
        measure = self.measure
        if self.model is not None and measure.set_attention(self.model, attn):
            self.switched = self.build.get("attn_implementation") != attn
            return True
        if attn in self.unsupported:
            return False
        self.release()
        try:
            self.model, self.build = measure.build_model(self.raw, self.group.dtype, attn)
            self.switched = False
            print(
                f"BUILD {self.group.model_id} {self.group.dtype} {attn} "
                f"weights={self.build['weights_allocated']} "
                f"params={self.build['param_bytes']} buffers={self.build['buffer_bytes']} "
                f"in {self.build['build_seconds']}s",
                flush=True,
            )
            return True
        except Exception as error:
            self.model = None
            oom = isinstance(error, measure._out_of_memory_error())
            message = f"{type(error).__name__}: {str(error)[:500]}"
            self.unsupported[attn] = message
            record = {
                "group": f"{self.group.model_id}|{self.group.dtype}",
                "phase": "build",
                "attn": attn,
                "oom": oom,
                "error": message,
            }
            emit(self.errors, record)
            print("BUILD-FAIL", json.dumps(record), flush=True)
            measure._clear_cuda()
            return False

    def release(self) -> None:
        self.model = None
        self.measure._clear_cuda()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", choices=("smoke", "full"), default="full")
    parser.add_argument("--out", required=True, help="JSON lines file to append measured cases to")
    parser.add_argument("--errors", default=os.devnull, help="JSON lines file for cases that raised")
    parser.add_argument("--models-dir", default=str(REPO / "data" / "models"))
    parser.add_argument(
        "--skip-done", action="append", default=[], help="JSON lines file of cases already measured"
    )
    parser.add_argument(
        "--time-budget-s", type=float, default=540.0, help="start no case after this many seconds"
    )
    parser.add_argument("--run-label", default="sweep")
    parser.add_argument(
        "--check-builds", action="store_true", help="first build a 2-layer copy of every model"
    )
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
