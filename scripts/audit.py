"""Privacy audit: ``python -m scripts.audit [hydra overrides]``.

Gradient inversion against a site's plaintext update, its local DP-SGD update and the
secure sum of several sites, for batch sizes 1, 4 and 16, and against a malicious server
that sends the sites different models (batch 1, the sites' checks off and on); model
inversion of a trained model. Writes ``audit.json`` (one entry per view, batch size and
attack: SSIM, PSNR, MSE, seconds, verdict), ``report.md`` and the PNG grids to the Hydra run
directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scripts.user_errors import one_line_errors
from task.audit.report import write_report
from task.audit.run import run_audit
from task.config import register_resolvers
from task.evaluation.html_report import write_html_report
from task.evaluation.report import write_json
from task.runtime.machine import machine_facts

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit")
@one_line_errors
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    federation = None
    if cfg.audit.federation_metrics:
        path = Path(cfg.audit.federation_metrics)
        if not path.is_file():
            raise FileNotFoundError(f"audit.federation_metrics={path} does not exist")
        federation = json.loads(path.read_text())
    result = run_audit(cfg, run_dir, model_option=hc.runtime.choices["model"])
    result["federation"] = federation
    result["machine"] = machine_facts()
    write_json(result, run_dir / "audit.json")
    report = write_report(result, run_dir / "report.md")
    html = write_html_report(run_dir)
    for e in result["gradient_inversion"]:
        view = e["view"] + (f" (checks {e['server_checks']})" if "server_checks" in e else "")
        if e["ssim"] is None:  # the sites refused: nothing to invert
            print(f"{view:>6} b={e['batch_size']:<2} {e['verdict']}")
            continue
        print(
            f"{view:>6} b={e['batch_size']:<2} {e['attack']:<19} SSIM {e['ssim']:.3f} "
            f"(prior {e['prior_ssim']:.3f}) PSNR {e['psnr']:5.2f} MSE {e['mse']:.4f} "
            f"{e['seconds']:6.1f}s  {e['verdict']}"
        )
    for e in result["model_inversion"]:
        print(f"model inversion {e['class']}: SSIM to nearest training image {e['ssim']:.3f}")
    print(f"written {run_dir / 'audit.json'}, {report} and {html}")


if __name__ == "__main__":
    main()
