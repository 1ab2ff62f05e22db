"""A hospital's readiness check: ``python -m scripts.check_site data_path=/data/cxr/train``.

Reads every image of the site's folder or CSV exactly as its training would (the run's data
and preprocessing config, :mod:`task.data.site_check`) and prints, one fact per line, the
usable images per class, every bad file with its reason, the image sizes, bit depths,
photometric interpretations and transfer syntaxes, and the intensity range after
preprocessing; ``check_site.json`` in the run directory holds the same. It sends nothing
anywhere. Exits 1 when training would not start: a bad file under ``on_bad_file=error``,
or a class without a usable image; 2 on a bad argument.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from scripts.user_errors import one_line_errors
from task.config import register_resolvers
from task.data.folder import ImageFolderSource
from task.data.site_check import check_site
from task.data.sites import reading_settings
from task.evaluation.report import write_json

register_resolvers()

#: Exit code when the run's policy would stop this site's training.
NOT_READY = 1


@hydra.main(version_base="1.3", config_path="../conf", config_name="check_site")
@one_line_errors
def main(cfg: DictConfig) -> None:
    data_path = Path(cfg.data_path)
    if not data_path.exists():
        raise FileNotFoundError(f"data_path={data_path} does not exist")
    source = ImageFolderSource(**reading_settings(cfg, str(data_path)))
    result = check_site(source, instantiate(cfg.transforms.preprocess))
    print(f"site {data_path}: classes {list(source.classes)}, on_bad_file={source.policy}")
    for line in result.lines():
        print(line)
    if cfg.write_json:
        path = write_json(
            result.to_dict(), Path(HydraConfig.get().runtime.output_dir) / "check_site.json"
        )
        print(f"written {path}")
    problems = result.problems()
    if problems:
        for problem in problems:
            print(f"NOT READY: {problem}")
        raise SystemExit(NOT_READY)
    left_out = f", leaving out {len(result.bad)} bad file(s)" if result.bad else ""
    print(f"ready: training would read {result.usable} images{left_out}")


if __name__ == "__main__":
    main()
