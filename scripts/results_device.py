"""``scripts.bench_device``'s section of docs/results.md (rendered by scripts.results_doc)."""

from __future__ import annotations


def _fed(f: dict, key: str) -> str:
    r = f[key]
    return f"{r['images_per_s']:.1f}, {r['ratio_to_plain']:.2f}"


def device(result: dict) -> str:
    """Training throughput against a plain loop, federated rounds, encrypted diagnosis."""
    m, d, w = result["machine"], result["device"], result["workload"]
    lines = [
        f"`python -m scripts.bench_device --device {d['device']}` ({m['cores']} cores, "
        f"{m.get('cpu', 'CPU')}, torch {m['torch']}; batch {w['batch']}, "
        f"{w['timed_steps']} timed steps after {w['warmup_steps']} warm-up, {w['precision']}). "
        f"{w['data']}",
        "",
        "| 224 px | project images/s | plain loop images/s | ratio (target ≥ 0.9) "
        "| federated round 1: images/s, ratio | last round: images/s, ratio (target ≥ 0.8) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, model in result["models"].items():
        c, f = model["centralised"], model.get("federated")
        fed = [_fed(f, "first_round"), _fed(f, "last_round")] if f else ["not run", "not run"]
        lines.append(
            f"| {name} | {c['project_images_per_s']:.1f} | {c['plain_images_per_s']:.1f} | "
            f"{c['ratio']:.2f} | {fed[0]} | {fed[1]} |"
        )
    e = result.get("encrypted")
    if e:
        lines += [
            "",
            f"Encrypted diagnosis ({e['model']}, {e['input_shape'][-1]} px, {e['transport']}, "
            f"parties on the {e['parties_device']}): {e['batch1_seconds_per_image']:.2f} s per "
            f"image at batch 1, {e['batch32_seconds_per_image']:.2f} at batch 32.",
        ]
    return "\n".join(lines)
