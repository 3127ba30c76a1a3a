"""Zoo table: every zoo model × analyzer family → works / clear error / WRONG / crash.

Runs the checks of ``tests/analyzers/test_zoo.py`` (each analyzer's identity against plain
autograd, or a ``NotAnalyzableModelError`` naming the operation and module) for every
model of ``tests/zoo.py`` and prints a markdown table for the issue's closing note:

- ``works``: every analyzer of the family gives a map that passes its check;
- ``clear error: <op>``: every one refuses with ``NotAnalyzableModelError`` naming ``<op>``;
- ``WRONG``: a map comes back and fails its identity (the count says how many of the family);
- ``crash: <ExceptionType>``: another exception escapes.

Variants (compiled, channels_last, float64, tuple/dict outputs with ``output_key``, bare
in-place statements against their out-of-place twin) get a row each: "works" means the map
equals the plain model's.

Run: ``python benchmarks/zoo_table.py``.
"""

from __future__ import annotations

import re
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "analyzers"), str(ROOT)]

import test_zoo  # noqa: E402

import lit_explain as lx  # noqa: E402

FAMILIES = {
    "gradient, I×G, IG, SmoothGrad": ("gradient", "input_t_gradient", "integrated_gradients",
                                     "smoothgrad"),
    "deconvnet, guided BP": ("deconvnet", "guided_backprop"),
    "LRP z / ε": ("lrp", "lrp.z", "lrp.epsilon"),
    "LRP z_IB / ε_IB": ("lrp.z_IB", "lrp.epsilon_IB"),
    "LRP w² / flat": ("lrp.w_square", "lrp.flat"),
    "LRP αβ / z⁺": ("lrp.alpha_beta", "lrp.alpha_2_beta_1", "lrp.alpha_2_beta_1_IB",
                    "lrp.alpha_1_beta_0", "lrp.alpha_1_beta_0_IB", "lrp.z_plus",
                    "lrp.z_plus_fast"),
    "LRP presets": ("lrp.sequential_preset_a", "lrp.sequential_preset_b",
                    "lrp.sequential_preset_a_flat", "lrp.sequential_preset_b_flat",
                    "lrp.sequential_preset_b_flat_until_idx"),
    "Deep Taylor": ("deep_taylor", "deep_taylor.bounded"),
    "DeepLIFT": ("deep_lift",),
    "PatternNet / -Attribution": ("pattern.net", "pattern.attribution"),
}


def operation(message: str) -> str:
    """The operation a refusal names, e.g. ``hardtanh`` for ``torch.nn.functional.hardtanh``."""
    match = re.search(r"([\w.]+) in (?:module|the model)", message)
    return match.group(1).rsplit(".", 1)[-1] if match else message.split(":")[0][:40]


def outcome(check, *args) -> tuple[str, str]:
    """("works" | "refused" | "wrong" | "crash", detail) for one check."""
    try:
        refused = check(*args)
    except AssertionError as error:
        if traceback.extract_tb(error.__traceback__)[-1].filename.endswith("test_zoo.py"):
            return "wrong", str(error).splitlines()[0][:80]
        return "crash", type(error).__name__  # an assert inside torch or the engine
    except Exception as error:  # noqa: BLE001 (a crash is what the table reports)
        return "crash", type(error).__name__
    return ("refused", refused) if refused else ("works", "")


def zoo_check(model_name: str, analyzer: str) -> str | None:
    """Run the zoo test; return the refused operation, or None if a map passed."""
    test_zoo.test_zoo(model_name, analyzer)
    result = test_zoo.zoo_map(model_name, analyzer)
    if isinstance(result, lx.NotAnalyzableModelError):
        return operation(str(result))
    if analyzer.startswith("pattern."):
        try:
            test_zoo.patterns(model_name)
        except lx.NotAnalyzableModelError as error:
            return operation(str(error))
    return None


def variant_check(variant: str, analyzer: str) -> str | None:
    test_zoo.test_variant_gives_the_plain_models_map(variant, analyzer)
    _, result, _ = test_zoo.variant_outcomes(variant, analyzer)
    return operation(str(result)) if isinstance(result, lx.NotAnalyzableModelError) else None


def cell(results: list[tuple[str, str]]) -> str:
    kinds = Counter(kind for kind, _ in results)
    crashes = sorted({detail for kind, detail in results if kind == "crash"})
    if crashes:
        return f"crash: {', '.join(crashes)} ({kinds['crash']}/{len(results)})"
    if kinds["wrong"]:
        return f"WRONG ({kinds['wrong']}/{len(results)})"
    ops = sorted({detail for kind, detail in results if kind == "refused"})
    if kinds["refused"] == len(results):
        return f"clear error: {', '.join(ops)}"
    if ops:
        return f"works ({kinds['works']}/{len(results)}), clear error: {', '.join(ops)}"
    return "works"


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = [(name, zoo_check, name) for name in test_zoo.MODELS]
    rows += [(f"variant: {name}", variant_check, name) for name in test_zoo.VARIANTS]
    header = ["model", *FAMILIES]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, check, key in rows:
        cells = [cell([outcome(check, key, analyzer) for analyzer in analyzers])
                 for analyzers in FAMILIES.values()]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
