"""Model cards (README.md with Hub YAML metadata) for generators."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RESULTS_BEGIN = "<!-- synthsets:results:begin -->"
RESULTS_END = "<!-- synthsets:results:end -->"


def _yaml_scalar(value: str) -> str:
    """``value`` as a YAML scalar: plain when safe, else double-quoted (JSON strings are YAML)."""
    text = str(value)
    # plain only when it starts with a letter: "123" or "0x1F" would read as numbers
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9._/-]*", text) and text.lower() not in {"true", "false", "yes", "no", "null", "on", "off"}:
        return text
    return json.dumps(text)


def _front_matter(dataset: str | None, metrics: list[dict[str, Any]] | None = None) -> str:
    lines = [
        "---",
        "library_name: synthsets",
        "license: mit",
        "tags:",
        "- dataset-distillation",
        "- dim",
        "- synthsets",
        "- conditional-gan",
        "- image-classification",
    ]
    if dataset:  # the Hub's dataset link: only for a named dataset
        lines += ["datasets:", f"- {_yaml_scalar(dataset)}"]
    if metrics:
        lines.append("metrics:")
        lines.append("- accuracy")
    lines.append("---")
    return "\n".join(lines)


def _introduction(title: str, dataset: str, details: str, load_as: str) -> str:
    """The card's title, what the generator is, and how to load it (``load_as``)."""
    return f"""# {title} for {dataset}

A conditional generator that stores **{dataset}** ({details}) for dataset distillation with
[synthsets](https://github.com/synthsets/synthsets), following DiM ("Distilling Dataset
into Generative Model"). Training loops draw fresh, labelled images from it every epoch.

```python
import synthsets
train = synthsets.DiM("{load_as}", inpc=10)   # 10 images per class per epoch
```
"""


def _settings_table(settings: dict[str, Any]) -> str:
    def cell(value: Any) -> str:  # a "|" would end the cell
        return str(value).replace("|", "\\|").replace("\n", " ")

    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {cell(k)} | {cell(v)} |" for k, v in settings.items())


_RESULTS_SECTION = f"""## Results

{RESULTS_BEGIN}
Not evaluated yet: run `python -m synthsets.evaluate --generator THIS_FOLDER --update-card`.
{RESULTS_END}
"""


def distill_card(cfg: Any, real: Any, epochs_done: int, wall_seconds: float | None, stage1: bool = False) -> str:
    """A model card for a freshly distilled generator (``wall_seconds``: the whole run's
    wall-clock time, every resumed session included; ``None`` for "n/a")."""
    what = "stage-1 conditional GAN (AC-WGAN-GP, before logits matching)" if stage1 else "DiM generator"
    settings = cfg.to_json()
    shown = {k: settings[k] for k in (
        "width", "disc_width", "noise_dim", "stage1_epochs", "stage2_epochs", "steps_per_epoch",
        "stage2_steps_per_epoch", "batch_size", "lr", "stage2_lr", "match_weight", "pool", "inner_steps",
        "siamese", "stage2_dsa", "seed", "preset", "stage1_minutes", "stage2_minutes",
    ) if k in settings}
    wall = f"{wall_seconds / 60:.1f} minutes" if wall_seconds is not None else "n/a"
    details = f"{real.num_classes} classes,\n{real.channels}x{real.image_size}x{real.image_size}"
    return f"""{_front_matter(real.name)}

{_introduction(what, real.name, details, "path/or/repo")}
## Training

Trained with `python -m synthsets.distill` on {real.name}: {epochs_done} epochs
completed, wall time {wall}.

{_settings_table(shown)}

Normalisation of generated images for classifiers: mean {real.mean}, std {real.std}
(images are mapped from [-1, 1] to [0, 1] first).

{_RESULTS_SECTION}"""


def generator_card(config: Any, repo_id: str) -> str:
    """A model card for a generator known by its config alone (``Generator.push_to_hub``
    writes it when no README.md is given): Hub metadata, what it is, how to load
    ``repo_id``."""
    dataset = config.dataset or None
    shown = {
        "classes": ", ".join(config.classes),
        "image size": f"{config.channels}x{config.image_size}x{config.image_size}",
        "width": config.width,
        "noise_dim": config.noise_dim,
        "normalisation mean / std": f"{config.mean} / {config.std}",
    }
    return f"""{_front_matter(dataset)}

{_introduction("DiM generator", dataset or "an unnamed dataset", f"{config.num_classes} classes", repo_id)}
{_settings_table(shown)}

{_RESULTS_SECTION}"""


def update_results(card_path: str | Path, markdown: str) -> None:
    """Replace the results section of a model card (append one if missing)."""
    from .hub import atomic_write_text

    path = Path(card_path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Generator\n"
    block = f"{RESULTS_BEGIN}\n{markdown.strip()}\n{RESULTS_END}"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        text = re.sub(re.escape(RESULTS_BEGIN) + r".*?" + re.escape(RESULTS_END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    atomic_write_text(path, text)
