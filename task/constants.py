"""Constants shared by every role: one place, so that sites and server agree."""

from __future__ import annotations

from pathlib import Path

#: Repository root (``task/`` lives directly under it).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Environment variable that points at ``pneumoniamnist.npz`` (overrides the default path).
DATA_ENV_VAR = "PRIMIA_DATA"

#: Where the bundled PneumoniaMNIST file lies in this workspace (``../shared/data``).
DEFAULT_PNEUMONIAMNIST = REPO_ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"

#: Published MedMNIST v2 file (Zenodo record 6496656) and the MD5 that MedMNIST lists for it.
PNEUMONIAMNIST_URL = "https://zenodo.org/records/6496656/files/pneumoniamnist.npz?download=1"
PNEUMONIAMNIST_MD5 = "28209eda62fecd6e6a2d98b1501bb15f"

#: Class names of PneumoniaMNIST, in label order.
PNEUMONIAMNIST_CLASSES = ("normal", "pneumonia")

#: Image file suffixes read by :mod:`task.data.files` (listed by task.data.listing), lower case.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")

#: Policies for a file that cannot be used.
BAD_FILE_POLICIES = ("error", "skip")

#: Largest image file read (bytes), and largest image (pixels, from the file's header,
#: checked before decoding): a decompression bomb or a wrong file is refused, not decoded.
MAX_IMAGE_BYTES = 512 * 2**20
MAX_IMAGE_PIXELS = 64_000_000

#: ITU-R BT.601 luma weights, used to turn RGB into one grayscale channel.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

#: Human readers of the PriMIA study (Kaissis et al., 2021), pneumonia vs normal.
EXPERT_READERS = {"accuracy": 0.795, "mcc": 0.579}

#: Names of the files every entry point writes into its run directory.
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
CHECKPOINT_BEST = "best.pt"
CHECKPOINT_LAST = "last.pt"
CHECKPOINT_FINAL = "final.pt"  # the last epoch's (round's) evaluated weights

#: Which weights a run tests and reports: the best validation MCC (PriMIA's choice) or the
#: last epoch / round (``train.selection``, ``federation.selection``).
SELECTIONS = ("val_mcc", "last")

#: Reply record (a ConfigRecord beside arrays and metrics) that names the replying site.
SITE_RECORD = "site"
#: Reply record of a site that declines a round's work it can do no harm by skipping (its
#: privacy budget spent): ``{"reason": code, "detail": words}``, sent instead of an update.
#: A decline is an answer, not a failure: the coordinator counts it by its code.
DECLINE_RECORD = "declined"

#: Bins of the per-class histograms of the positive-class score that sites report, so that
#: a federation AUC can be computed from summed counts (secure aggregation reveals sums).
SCORE_BINS = 200

#: Per-site ratios: meaningless when summed, so under secure aggregation they stay at the
#: site unless its node config sets ``share-site-metrics = true``.
SITE_LEVEL_METRICS = ("auc", "accuracy", "mcc")

#: Round-config keys carrying the federation's intensity statistics to the sites.
NORM_MEAN, NORM_STD = "norm-mean", "norm-std"

#: Seconds the simulation's grid waits between looks for the sites' replies (Flower's
#: ``InMemoryGrid`` default: 0.1). Each look is a lookup in memory; the wait is paid after
#: the last reply of every exchange, twice a round.
SIM_PULL_INTERVAL = 0.01

#: Logger of the lines a person follows a run by (one per round or epoch): the console
#: shows it at INFO where Hydra's config (conf/hydra/default.yaml) sends the rest to the
#: run directory's log only.
PROGRESS_LOGGER = "primia.progress"
