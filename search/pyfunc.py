"""Every finished trial as an MLflow Model: ``mlflow.pyfunc.load_model(uri).predict(images) -> logits``.

The model is logged *from code* (MLflow's "models from code"): the MLflow Model holds
``pyfunc_model_code.py`` (three lines that name :class:`McelLogitsModel`) and the trial's checkpoint
``model.pt`` as an artifact; nothing is pickled. Loading runs :meth:`McelLogitsModel.load_context`, which
reads the checkpoint with ``torch.load(..., weights_only=True)`` (``core.checkpoint.load_checkpoint``) and
rebuilds the network from this package's code, so the loading environment needs ``mcel-search``
installed (the model's ``requirements.txt`` pins it and torch).

Input: a float32 array (or tensor) of images ``(N, C, H, W)`` as the model was trained on (the test
transform's output: standardized for the ``default`` protocol, [0, 1] for ``paper``; the signature's
input example is one such image of the trial's data set). Output: the logits ``(N, classes)``, float32,
the network's eval-mode forward pass (clean weights: no bit errors).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from ..analysis.queries import MODEL_ID_TAG  # noqa: F401  (the run tag of the logged model's id)

#: The models-from-code file MLflow copies into every logged model.
CODE_FILE = Path(__file__).with_name("pyfunc_model_code.py")
#: Name of the logged model in a run (``runs:/<run>/model``-style references and the LoggedModel's name).
MODEL_NAME = "model"


#: MLflow's advice, when a PythonModel subclass is created, to type-hint ``predict`` for a schema: this
#: model's schema is its logged signature (from the input example), so the advice is noise in every search.
TYPE_HINT_ADVICE = "Add type hints to the `predict` method"


@contextlib.contextmanager
def _without_type_hint_advice() -> Iterator[None]:
    """Drop :data:`TYPE_HINT_ADVICE` while the block runs. A warnings filter cannot: MLflow wraps its check
    in ``catch_warnings`` + ``simplefilter("once")``, which outranks every filter installed before; so the
    display hook skips that one message and passes every other warning through."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if TYPE_HINT_ADVICE not in str(message):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


with _without_type_hint_advice():

    class McelLogitsModel(mlflow.pyfunc.PythonModel):
        """A trained MCEL/CEL network: images in, logits out (module docstring)."""

        def load_context(self, context: Any) -> None:
            from ..core.checkpoint import load_checkpoint

            self.model, self.payload = load_checkpoint(context.artifacts["checkpoint"], device="cpu")
            self.model.eval()

        # no type hints here: MLflow reads predict's hints as an input schema (and warns at every log that
        # ``Any`` is none); the signature comes from the logged input example instead
        def predict(self, context, model_input, params=None):
            """``model_input``: float images ``(N, C, H, W)`` (array or tensor) -> logits ``(N, classes)``."""
            import torch

            x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
            with torch.no_grad():
                return self.model(x).numpy().astype(np.float32)


def requirements() -> list[str]:
    """What the loading environment needs: this package and its torch (pinned; nothing inferred)."""
    import torch

    from .. import __version__

    return [f"mcel-search=={__version__}", f"torch=={torch.__version__.split('+')[0]}"]


def log_trial_model(run_id: str, checkpoint: Path, example: np.ndarray, tracking_uri: str) -> str:
    """Log ``checkpoint`` as the MLflow Model of run ``run_id`` (signature and input example from
    ``example``, one batch of input images); returns the LoggedModel id."""
    from mlflow.models import infer_signature

    from ..core.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint, device="cpu")
    model.eval()
    import torch

    with torch.no_grad():
        logits = model(torch.as_tensor(example)).numpy().astype(np.float32)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        stored = Path(tmp) / "model.pt"  # the name `mcel evaluate models:/...` looks for in a model
        shutil.copyfile(checkpoint, stored)
        with mlflow.start_run(run_id=run_id), _without_type_hint_advice():
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(CODE_FILE),
                artifacts={"checkpoint": str(stored)},
                signature=infer_signature(example, logits),
                input_example=example,
                pip_requirements=requirements(),
            )
    return info.model_id
