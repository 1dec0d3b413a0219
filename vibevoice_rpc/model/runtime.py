"""The seam between the engine and the local model: how a checkpoint is planned and loaded, and
what runs a loaded model over a window.

:class:`Engine <vibevoice_rpc.engine.Engine>` takes a :class:`LocalRuntime` (this one by default)
and never calls the loader or builds a runner itself, so a test (``tests/scripted.py``) plugs in by
passing a subclass, not by patching module functions. Nothing here is
imported before the first load: torch and transformers come in with :mod:`vibevoice_rpc.model.loader`
and :mod:`vibevoice_rpc.model.runner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..transcription.stream import Runner, RunnerInfo
    from .loader import LoadedModel, LoadSpec, Prepared

__all__ = ["LocalRuntime"]


class LocalRuntime:
    """The model in this process: :mod:`vibevoice_rpc.model.loader` loads it, a
    :class:`~vibevoice_rpc.model.runner.LocalRunner` runs it."""

    def prepare(self, precision: str, *, spec: LoadSpec, reclaimable_bytes: int = 0) -> Prepared:
        """Find the checkpoint and plan the memory, before anything loaded is touched."""
        from .loader import prepare_load

        return prepare_load(precision, spec=spec, reclaimable_bytes=reclaimable_bytes)

    def load(
        self,
        precision: str,
        *,
        spec: LoadSpec,
        check_cancelled: Callable[[], None],
        prepared: Prepared | None = None,
    ) -> LoadedModel:
        """Load the model and its processor (as ``prepared`` decided, else planned now)."""
        from .loader import load_model

        return load_model(precision, spec=spec, check_cancelled=check_cancelled, prepared=prepared)

    def runner(self, loaded: LoadedModel, info: RunnerInfo) -> Runner:
        """What runs ``loaded`` over one window at a time."""
        from .runner import LocalRunner

        return LocalRunner(loaded.model, loaded.processor, info)
