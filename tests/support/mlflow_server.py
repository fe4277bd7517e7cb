"""A real scikit-learn model saved with MLflow, and MLflow's own scoring server for it.

:func:`train_iris_model` fits a logistic regression on scikit-learn's bundled iris data
(named columns, class names as labels) and saves it with ``mlflow.sklearn.save_model``;
:class:`MlflowScoringServer` runs ``mlflow models serve`` on it as a child process, ready
once ``/ping`` answers. Both take seconds, so tests share them per module.

mlflow is imported inside the functions, not at the top: it decides at import time
whether to send usage telemetry, and only skips it when it sees ``PYTEST_CURRENT_TEST``,
which pytest sets while running fixtures but not while collecting.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bridge.embedded import free_port
from bridge.lifecycle import Running

LABEL = "species"


@dataclass(frozen=True)
class TrainedModel:
    """A fitted estimator, where MLflow saved it, and its input columns in order."""

    path: Path
    estimator: Any  # sklearn's LogisticRegression; scikit-learn ships no types
    features: tuple[str, ...]
    train_rows: tuple[dict[str, float], ...]

    def predict(self, rows: Sequence[Mapping[str, object]]) -> list[str]:
        """The estimator's predictions for ``rows`` computed offline, one per row."""
        import pandas as pd

        frame = pd.DataFrame([[row[f] for f in self.features] for row in rows])
        frame.columns = list(self.features)
        return [str(label) for label in self.estimator.predict(frame)]

    def predict_by_id(self, rows: Sequence[Mapping[str, object]]) -> dict[str, str]:
        """:meth:`predict` keyed by each row's ``id``."""
        return dict(zip((str(r["id"]) for r in rows), self.predict(rows), strict=True))

    def event(self, i: int, **extra: object) -> dict[str, object]:
        """Event ``i``: a training row with deterministic jitter, plus an ``id``.

        Cycling through the training rows covers all three classes; the jitter makes most
        events new to the model while keeping them near real flowers.
        """
        jitter = random.Random(i)
        base = self.train_rows[i % len(self.train_rows)]
        features = {f: round(max(0.1, v + jitter.uniform(-0.3, 0.3)), 2) for f, v in base.items()}
        return {"id": f"e{i}", **features, **extra}


def train_iris_model(directory: Path) -> TrainedModel:
    """Fit a classifier on iris and save it as an MLflow model in ``directory``.

    The signature comes from the training data, so the scoring server enforces the four
    named double columns and rejects a request without one of them.
    """
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris(as_frame=True)
    features: pd.DataFrame = iris.data
    # Class names rather than 0/1/2: the predictions are then exact strings to compare,
    # and an integer label column would make infer_signature warn about missing values.
    labels = pd.Series(iris.target_names[iris.target], name=LABEL)
    estimator = LogisticRegression(max_iter=1000).fit(features, labels)
    mlflow.sklearn.save_model(
        estimator,
        str(directory),
        signature=infer_signature(features, labels),
        # Listing requirements skips MLflow's inference of them (seconds, importing the
        # model in a subprocess); `--env-manager local` never reads them anyway.
        pip_requirements=["scikit-learn"],
    )
    rows = tuple(
        {str(k): float(v) for k, v in record.items()}
        for record in features.to_dict(orient="records")
    )
    return TrainedModel(directory, estimator, tuple(map(str, features.columns)), rows)


class MlflowScoringServer(Running):
    """``mlflow models serve -m DIR --env-manager local`` in its own process group.

    ``--env-manager local`` scores in this virtualenv instead of building a new one, and
    the CLI execs ``uvicorn`` by name, so the virtualenv's ``bin`` goes first on PATH.
    The CLI runs uvicorn as its child: stopping signals the whole group so neither is
    left behind. Output goes to ``log_path`` (a pipe nobody reads could fill and stall
    the server); its tail is in the error when the server does not come up.
    """

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 90.0,
    ) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.host = host
        self.port = free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def invocations_url(self) -> str:
        return f"{self.url}/invocations"

    def start(self) -> MlflowScoringServer:
        """Start the server and return once ``/ping`` answers 200; RuntimeError if not."""
        bin_dir = Path(sys.executable).parent
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        command = [
            str(bin_dir / "mlflow"),
            "models",
            "serve",
            "-m",
            str(self.model_dir),
            "--env-manager",
            "local",
            "-h",
            self.host,
            "-p",
            str(self.port),
        ]
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_ready(started + self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"{self.url}/ping").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                # Waiting on the process doubles as the poll interval and notices an early
                # exit (port taken, uvicorn not on PATH) at once.
                try:
                    code = self._process.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue
                raise RuntimeError(f"mlflow models serve exited with {code}:\n{self._log_tail()}")
        raise RuntimeError(
            f"mlflow models serve not ready within {self.startup_timeout_s}s:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait(timeout_s)
        # The CLI may be gone while its uvicorn child is still shutting down.
        self._signal_group(process, signal.SIGKILL)

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(process.pid, sig)  # start_new_session made the pid the group id
