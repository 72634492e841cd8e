"""The words a table's header row may use: parameter names in English, and in Chinese.

People keep the spreadsheet templates they already have. A batch tool's template
with the headings 提示词, 负面提示词, 图片比例, 分辨率, 参考示例图, 生成数量 and
文件名 reads as it is, and ``kiln export --headers zh`` writes those headings
back, so a table goes out and comes in again in the user's own words.

>>> column_name(" Negative Prompt ")
'negative_prompt'
>>> column_name("图片比例")
'aspect_ratio'
>>> heading("n", "zh")
'生成数量'
"""

from __future__ import annotations

import re
from typing import Literal

from pixelkiln.specs import TASK_KEYS

#: the language of a table's headings: ``en`` the parameter names, ``zh`` Chinese
Headers = Literal["en", "zh"]
HEADER_LANGUAGES: tuple[Headers, ...] = ("en", "zh")

#: columns an export adds after the task's own: read over, so an exported table runs again
RESULT_COLUMNS = ("status", "error", "images", "links", "final_prompt")

#: the Chinese heading each column is written with (``--headers zh``); each is also read
ZH_HEADINGS: dict[str, str] = {
    "key": "编号",
    "prompt": "提示词",
    "negative_prompt": "负面提示词",
    "aspect_ratio": "图片比例",
    "resolution": "分辨率",
    "reference_images": "参考示例图",
    "n": "生成数量",
    "filename_prefix": "文件名",
    "init_image": "原图",
    "backend": "后端",
    "model": "模型",
    "width": "宽度",
    "height": "高度",
    "seed": "种子",
    # as Stable Diffusion WebUI's Chinese localisation names them
    "steps": "迭代步数",
    "cfg_scale": "提示词引导系数",
    "sampler": "采样方法",
    "denoise": "重绘幅度",
    "status": "状态",
    "error": "错误信息",
    "images": "图片文件",
    "links": "图片链接",
    "final_prompt": "最终提示词",
}
#: further headings read as a column: other words such templates use for the same thing
ZH_SYNONYMS: dict[str, str] = {
    "序号": "key",
    "反向提示词": "negative_prompt",
    "比例": "aspect_ratio",
    "参考图": "reference_images",
    "数量": "n",
    "文件名前缀": "filename_prefix",
    "后端服务": "backend",
    "步数": "steps",
    "采样步数": "steps",
    "采样迭代步数": "steps",
    "cfg": "cfg_scale",
    "引导系数": "cfg_scale",
    "提示词相关性": "cfg_scale",
    "采样器": "sampler",
    "采样算法": "sampler",
    "重绘强度": "denoise",
    "去噪强度": "denoise",
    "随机种子": "seed",
}
_BY_HEADING = {zh: column for column, zh in ZH_HEADINGS.items()} | ZH_SYNONYMS
#: an English gloss after a heading, as WebUI writes them: 提示词引导系数 (CFG Scale)
_GLOSS = re.compile(r"\s*[(\uff08][^()\uff08\uff09]*[)\uff09]\s*$")


def column_name(heading: str) -> str:
    """The column a heading names: ``" Negative Prompt "`` and ``负面提示词`` alike.

    English headings match whatever their case and surrounding spaces; a heading
    that is no known word comes back normalised the same way (an item field).
    """
    text = heading.strip()
    known = _known_word(text)
    return _BY_HEADING[known] if known else re.sub(r"[\s\-]+", "_", text.lower())


def _known_word(text: str) -> str | None:
    """The word of ``text`` (as typed, or without its bracketed gloss; any case) that
    names a column, as ``_BY_HEADING`` holds it; None when it names none."""
    for word in (text, _GLOSS.sub("", text)):
        for form in (word, word.lower()):
            if form in _BY_HEADING:
                return form
    return None


def is_chinese_heading(heading: str) -> bool:
    """Whether a heading is one of the Chinese words for a column (not an English name):
    what tells a table saved in a Chinese code page from one misread as such."""
    known = _known_word(heading.strip())
    return known is not None and not known.isascii()


def heading(column: str, headers: Headers) -> str:
    """The heading an export writes for ``column`` in the language asked."""
    return ZH_HEADINGS.get(column, column) if headers == "zh" else column


def check_headers(value: str) -> Headers:
    """``"ZH"`` → ``"zh"``; ValueError naming the languages for anything else."""
    lowered = value.strip().lower()
    for language in HEADER_LANGUAGES:
        if lowered == language:
            return language
    raise ValueError(f"headers must be one of {', '.join(HEADER_LANGUAGES)} (got '{value}')")


#: every column a table may carry (parameters and the key)
COLUMN_NAMES = TASK_KEYS
