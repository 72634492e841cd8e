"""How the fake ComfyUI reads a workflow in API format: validation and what to draw.

Only the core nodes a txt2img / img2img graph uses are known; others are
rejected as ComfyUI rejects a node class it does not have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Graph = dict[str, dict[str, Any]]

DEFAULT_CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors")
SAMPLERS = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpmpp_2m",
    "dpmpp_sde",
    "ddim",
    "uni_pc",
    "lcm",
)
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")
OUTPUT_NODES = frozenset({"SaveImage", "PreviewImage"})

#: class → its required inputs
REQUIRED: dict[str, tuple[str, ...]] = {
    "KSampler": (
        "model",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
    ),
    "KSamplerAdvanced": (
        "model",
        "add_noise",
        "noise_seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "start_at_step",
        "end_at_step",
        "return_with_leftover_noise",
    ),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "CLIPTextEncode": ("text", "clip"),
    "VAEDecode": ("samples", "vae"),
    "VAEEncode": ("pixels", "vae"),
    "SaveImage": ("images", "filename_prefix"),
    "PreviewImage": ("images",),
    "LoadImage": ("image",),
    "RepeatLatentBatch": ("samples", "amount"),
}
#: (class, input) → (min, max)
RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("KSampler", "seed"): (0, 0xFFFFFFFFFFFFFFFF),
    ("KSampler", "steps"): (1, 10000),
    ("KSampler", "cfg"): (0.0, 100.0),
    ("KSampler", "denoise"): (0.0, 1.0),
    ("KSamplerAdvanced", "noise_seed"): (0, 0xFFFFFFFFFFFFFFFF),
    ("EmptyLatentImage", "width"): (16, 16384),
    ("EmptyLatentImage", "height"): (16, 16384),
    ("EmptyLatentImage", "batch_size"): (1, 4096),
    ("RepeatLatentBatch", "amount"): (1, 64),
}


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def validate(
    graph: Any, checkpoints: Iterable[str], inputs: set[tuple[str, str]]
) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
    """``(error, node_errors, output node ids)`` as ComfyUI's ``validate_prompt`` reports."""
    if not isinstance(graph, dict):
        return _error("invalid_prompt", "Prompt is not a dict"), {}, []
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return (
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
                {},
                [],
            )
        if node["class_type"] not in REQUIRED:
            return (
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                ),
                {},
                [],
            )
    outputs = [n for n, node in graph.items() if node["class_type"] in OUTPUT_NODES]
    if not outputs:
        return _error("prompt_no_outputs", "Prompt has no outputs"), {}, []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        for node_id in _ancestors(graph, output):
            problems = _node_problems(graph, node_id, tuple(checkpoints), inputs)
            if problems:
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": problems,
                        "dependent_outputs": [],
                        "class_type": graph[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(output)
    if node_errors:
        return (
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
            node_errors,
            outputs,
        )
    return None, {}, outputs


def _ancestors(graph: Graph, start: str) -> list[str]:
    seen: list[str] = []
    stack = [start]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.append(node_id)
        stack.extend(str(v[0]) for v in graph[node_id].get("inputs", {}).values() if _is_link(v))
    return seen


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _node_problems(
    graph: Graph, node_id: str, checkpoints: tuple[str, ...], inputs: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    node = graph[node_id]
    kind, values = node["class_type"], node.get("inputs", {})
    problems = []
    for name in REQUIRED[kind]:
        value = values.get(name)
        if value is None or (_is_link(value) and str(value[0]) not in graph):
            problems.append(
                _error("required_input_missing", "Required input is missing", name, input_name=name)
            )
            continue
        problems.extend(_value_problems(kind, name, value, checkpoints, inputs))
    return problems


def _value_problems(
    kind: str, name: str, value: Any, checkpoints: tuple[str, ...], inputs: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    if _is_link(value):
        return []
    allowed: tuple[str, ...] | None = (
        {
            "ckpt_name": checkpoints,
            "sampler_name": SAMPLERS,
            "scheduler": SCHEDULERS,
            "image": tuple(n for (sub, n) in inputs if sub == ""),
        }.get(name)
        if kind != "SaveImage"
        else None
    )
    if allowed is not None and value not in allowed:
        return [
            _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {list(allowed)}",
                input_name=name,
                received_value=value,
            )
        ]
    bounds = RANGES.get((kind, name))
    if bounds is None:
        return []
    if not isinstance(value, int | float) or isinstance(value, bool):
        return [
            _error(
                "invalid_input_type",
                "Failed to convert an input value",
                name,
                input_name=name,
                received_value=value,
            )
        ]
    low, high = bounds
    if value < low:
        return [
            _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {low}",
                name,
                input_name=name,
                received_value=value,
            )
        ]
    if value > high:
        return [
            _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {high}",
                name,
                input_name=name,
                received_value=value,
            )
        ]
    return []


def find_text(
    graph: Graph, output_id: str, input_size: Callable[[str], tuple[int, int]]
) -> tuple[str, int, int, int, int]:
    """What an output node shows: ``(positive text, seed, width, height, image count)``."""
    sampler = next(
        (
            graph[n]
            for n in _ancestors(graph, output_id)
            if graph[n]["class_type"] in ("KSampler", "KSamplerAdvanced")
        ),
        None,
    )
    if sampler is None:
        return "", 0, 64, 64, 1
    values = sampler["inputs"]
    seed = int(values.get("seed", values.get("noise_seed", 0)))
    text = str(graph[str(values["positive"][0])]["inputs"].get("text", ""))
    latent_id, count = str(values["latent_image"][0]), 1
    if graph[latent_id]["class_type"] == "RepeatLatentBatch":
        count = int(graph[latent_id]["inputs"]["amount"])
        latent_id = str(graph[latent_id]["inputs"]["samples"][0])
    latent = graph[latent_id]
    if latent["class_type"] == "EmptyLatentImage":
        v = latent["inputs"]
        return text, seed, int(v["width"]), int(v["height"]), int(v["batch_size"]) * count
    loader = next(
        (graph[n] for n in _ancestors(graph, latent_id) if graph[n]["class_type"] == "LoadImage"),
        None,
    )
    width, height = input_size(str(loader["inputs"]["image"])) if loader else (64, 64)
    return text, seed, width, height, count
