"""ComfyUI workflows in API format: loading, the built-in graphs, filling placeholders.

Kept apart from the HTTP client in :mod:`pixelkiln.backends.comfyui` because it
is pure data work, testable without a server. The node classes and inputs it
fills are listed in that module's docstring.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pixelkiln.backends.base import GenerationRequest
from pixelkiln.backends.http import MAX_MESSAGE
from pixelkiln.exceptions import ConfigError, RejectedInputError

Graph = dict[str, dict[str, Any]]

SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
#: WebUI sampler names → ComfyUI sampler_name (" Karras" / " Exponential" set the scheduler)
WEBUI_SAMPLERS = {
    "euler a": "euler_ancestral",
    "euler": "euler",
    "lms": "lms",
    "heun": "heun",
    "dpm2": "dpm_2",
    "dpm2 a": "dpm_2_ancestral",
    "dpm++ 2s a": "dpmpp_2s_ancestral",
    "dpm++ 2m": "dpmpp_2m",
    "dpm++ sde": "dpmpp_sde",
    "dpm++ 2m sde": "dpmpp_2m_sde",
    "dpm fast": "dpm_fast",
    "dpm adaptive": "dpm_adaptive",
    "ddim": "ddim",
    "unipc": "uni_pc",
    "lcm": "lcm",
}
SCHEDULER_SUFFIXES = {" karras": "karras", " exponential": "exponential"}
#: how many links to walk back from a sampler input to find its text encoder
MAX_LINK_DEPTH = 8

_TXT2IMG: Graph = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "cfg": 7.0,
            "denoise": 1.0,
            "latent_image": ["5", 0],
            "model": ["4", 0],
            "negative": ["7", 0],
            "positive": ["6", 0],
            "sampler_name": "euler",
            "scheduler": "normal",
            "seed": 0,
            "steps": 20,
        },
    },
    "4": {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
    },
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"batch_size": 1, "height": 512, "width": 512},
    },
    "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": "pixelkiln", "images": ["8", 0]},
    },
}


def default_workflow(img2img: bool) -> Graph:
    """A fresh copy of the built-in txt2img graph, or its img2img variant.

    img2img: LoadImage → VAEEncode → RepeatLatentBatch (n copies) → the sampler.
    """
    graph = copy.deepcopy(_TXT2IMG)
    if img2img:
        del graph["5"]
        graph["10"] = {"class_type": "LoadImage", "inputs": {"image": ""}}
        graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
        graph["12"] = {
            "class_type": "RepeatLatentBatch",
            "inputs": {"samples": ["11", 0], "amount": 1},
        }
        graph["3"]["inputs"]["latent_image"] = ["12", 0]
    return graph


def load_workflow(value: Any, backend: str) -> Graph | None:
    """The workflow an option names: a path to an API-format JSON file, or the graph itself."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return _checked(value, backend, "options.workflow")
    path = Path(str(value)).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"backend '{backend}': cannot read workflow {path}: {exc.strerror}"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"backend '{backend}': workflow {path} is not valid JSON") from exc
    return _checked(data, backend, str(path))


def _checked(data: Any, backend: str, where: str) -> Graph:
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise ConfigError(
            f"backend '{backend}': {where} is a UI workflow; export it with 'Save (API format)'"
        )
    if not isinstance(data, dict) or not all(
        isinstance(n, dict) and "class_type" in n for n in data.values()
    ):
        raise ConfigError(
            f"backend '{backend}': {where} is not a workflow in API format "
            "({node_id: {class_type, inputs}})"
        )
    if not any(n["class_type"] in SAMPLER_NODES for n in data.values()):
        raise ConfigError(f"backend '{backend}': {where} has no KSampler node to fill")
    return data


def fill_workflow(
    graph: Graph, request: GenerationRequest, *, model: str, image: str | None, backend: str
) -> Graph:
    """A copy of ``graph`` with the task's values in their nodes."""
    graph = copy.deepcopy(graph)
    for node in graph.values():
        kind, inputs = node["class_type"], node.setdefault("inputs", {})
        if kind in SAMPLER_NODES:
            _fill_sampler(graph, kind, inputs, request)
        elif kind == "EmptyLatentImage":
            inputs.update(width=request.width, height=request.height, batch_size=request.n)
        elif kind == "RepeatLatentBatch":
            inputs["amount"] = request.n
        elif kind == "CheckpointLoaderSimple" and model:
            inputs["ckpt_name"] = model
        elif kind == "LoadImage" and image is not None:
            inputs["image"] = image
    if image is not None and not any(n["class_type"] == "LoadImage" for n in graph.values()):
        raise RejectedInputError(f"backend '{backend}': the workflow has no LoadImage node")
    return graph


def checkpoint_of(graph: Graph) -> str:
    """The checkpoint a filled graph loads ("" when it names none): the model it runs."""
    for node in graph.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            return str(node.get("inputs", {}).get("ckpt_name") or "")
    return ""


def _fill_sampler(
    graph: Graph, kind: str, inputs: dict[str, Any], request: GenerationRequest
) -> None:
    inputs["noise_seed" if kind == "KSamplerAdvanced" else "seed"] = request.seed
    inputs["steps"] = request.steps
    inputs["cfg"] = request.cfg_scale
    if request.sampler:
        sampler, scheduler = comfy_sampler(request.sampler)
        inputs["sampler_name"] = sampler
        if scheduler:
            inputs["scheduler"] = scheduler
    if kind == "KSampler" and request.init_image is not None:
        inputs["denoise"] = request.denoise
    _set_text(graph, inputs.get("positive"), request.prompt)
    _set_text(graph, inputs.get("negative"), request.negative_prompt)


def _set_text(graph: Graph, link: Any, text: str) -> None:
    """Put ``text`` in the text encoder that ``link`` leads back to (through conditioning nodes)."""
    for _ in range(MAX_LINK_DEPTH):
        if not (isinstance(link, list) and len(link) == 2 and str(link[0]) in graph):
            return
        node = graph[str(link[0])]
        inputs = node.setdefault("inputs", {})
        if node["class_type"] == "CLIPTextEncode":
            inputs["text"] = text
            return
        if node["class_type"] == "CLIPTextEncodeSDXL":
            inputs["text_g"] = inputs["text_l"] = text
            return
        link = next((v for k, v in inputs.items() if "conditioning" in k.lower()), None)


def comfy_sampler(name: str) -> tuple[str, str | None]:
    """``(sampler_name, scheduler or None)`` for a WebUI or ComfyUI sampler name."""
    lowered = name.strip().lower()
    scheduler = None
    for suffix, value in SCHEDULER_SUFFIXES.items():
        if lowered.endswith(suffix):
            lowered, scheduler = lowered.removesuffix(suffix), value
    return WEBUI_SAMPLERS.get(lowered, name.strip()), scheduler


def describe_node_errors(body: bytes) -> str:
    """A readable line from a 400 of ``/prompt``: the error and each node's problems."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:MAX_MESSAGE]
    error = data.get("error") if isinstance(data, dict) else None
    parts = [_error_text(error)] if error else []
    nodes = data.get("node_errors") if isinstance(data, dict) else None
    for node_id, entry in (nodes or {}).items() if isinstance(nodes, dict) else ():
        problems = "; ".join(_error_text(e) for e in entry.get("errors", []))
        parts.append(f"node {node_id} ({entry.get('class_type', '?')}): {problems}")
    text = " | ".join(p for p in parts if p) or "invalid workflow"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    message, details = str(error.get("message", "")), str(error.get("details", ""))
    return f"{message}: {details}" if details else message
