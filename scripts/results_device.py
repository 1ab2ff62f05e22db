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
    lines += _phase_lines(result["models"])
    lines += _cache_lines(result.get("site_cache"))
    e = result.get("encrypted")
    if e:
        lines += [
            "",
            f"Encrypted diagnosis ({e['model']}, {e['input_shape'][-1]} px, {e['transport']}, "
            f"parties on the {e['parties_device']}): {e['batch1_seconds_per_image']:.2f} s per "
            f"image at batch 1, {e['batch32_seconds_per_image']:.2f} at batch 32.",
        ]
        for name, t in e.get("by_device", {}).items():
            if name != e["parties_device"]:
                lines[-1] += (
                    f" Both parties on the {name} in the same run: "
                    f"{t['batch1_seconds_per_image']:.2f} and {t['batch32_seconds_per_image']:.2f}."
                )
    return "\n".join(lines)


def _cache_lines(c: dict | None) -> list[str]:
    """The site cache's table: the first epoch against later ones and the next process."""
    if not c:
        return []
    rows = [
        ("first epoch: decode, preprocess, write the cache; train", "first_epoch"),
        ("later epoch of the same process", "later_epoch"),
        ("next process (a site's next round): cache hit; train", "next_process"),
        (
            "next process without the cache: decode again (train: the later epochs' mean)",
            "uncached_process",
        ),
    ]
    lines = [
        "",
        f"Site cache ({c['model']}, {c['files']} files: {c['source']}; "
        f"{c['train_images']} training images; loader {c['loader']}):",
        "",
        "| epoch | load s | train s | images/s |",
        "| --- | --- | --- | --- |",
    ]
    for label, key in rows:
        f = c[key]
        lines.append(
            f"| {label} | {f['load_seconds']:.2f} | {f['epoch_seconds']:.2f} | "
            f"{f['images_per_s']:.2f} |"
        )
    lines += ["", f"Later epochs run {c['later_over_first']:.2f}× the first epoch's images/s."]
    return lines


def _phase_lines(models: dict) -> list[str]:
    """Where each model's last federated round went, by the strategy's phase clock."""
    lines = []
    for name, model in models.items():
        last = (model.get("federated") or {}).get("last_round", {})
        phases = last.get("phase_seconds")
        if not phases:
            continue
        parts = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
        rest = last["seconds"] - sum(phases.values())
        lines.append(
            f"- {name}, last round of {last['seconds']:.2f} s: {parts}; the rest (the server's "
            f"checkpoints, history and moving average, the engine) {rest:.2f}."
        )
    return ["", "Phases of the last federated round (seconds):", "", *lines] if lines else []
