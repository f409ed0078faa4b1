"""Each run's own log on disk (``STORE/SUITE/work/<config hash>/run.log``): its messages and the
warnings that the progress bar hides (Lightning's, PyTorch's, ours), kept after success, and a
failed run's traceback. While a run is on, Lightning's informational lines ("GPU available",
"Restoring states from the checkpoint") go to the file only, so the terminal shows progress and
results. Built on the standard `logging` module (warnings through ``logging.captureWarnings``)."""

from __future__ import annotations

import contextlib
import logging
import platform
import warnings
from datetime import datetime, timezone
from pathlib import Path

LOG_NAME = "run.log"
# Lightning's loggers do not propagate to the root logger: each gets the file too
_LIGHTNING = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

log = logging.getLogger("bench")


def run_log_path(work: Path, config_hash: str) -> Path:
    return Path(work) / config_hash / LOG_NAME


@contextlib.contextmanager
def run_log(path: Path, header: str = ""):
    """Everything logged or warned inside the block is appended to ``path``: our messages, the
    warnings, and Lightning's lines (only there, not on the terminal); other libraries' log
    records too (where they also go to any handler the root logger has)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    saved = []  # (logger, propagate, level, stream handlers taken off)
    for name in ("bench", "py.warnings", *_LIGHTNING):
        logger = logging.getLogger(name)
        streams = [h for h in logger.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        saved.append((logger, logger.propagate, logger.level, streams))
        for h in streams:
            logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False  # to the file only: the terminal keeps progress bars and results
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    root.addHandler(handler)
    logging.captureWarnings(True)
    with warnings.catch_warnings():  # a fresh "once per location" registry: every run's log has its warnings
        log.info("run started on %s at %s%s", platform.node(), datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 f": {header}" if header else "")
        try:
            yield path
        except Exception:
            log.exception("run failed")
            raise
        except BaseException as exc:  # SIGTERM/SIGINT (bench.runner.RunInterrupted), SystemExit
            log.warning("run interrupted (%s); it resumes from its checkpoints", type(exc).__name__)
            raise
        else:
            log.info("run finished")
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            for logger, propagate, level, streams in saved:
                logger.removeHandler(handler)
                logger.propagate, logger.level = propagate, level
                for h in streams:
                    logger.addHandler(h)
            handler.close()
