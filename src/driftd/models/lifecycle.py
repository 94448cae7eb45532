"""A model's way from bytes to serving: publish -> verify -> load -> warm -> alias -> swap.

The one owner of which version serves. A deploy publishes an immutable registry version, reads
its bytes back and checks their sha256, loads them (or takes the object the training process
already loaded from those bytes), warms the model up with real predictions, moves the champion
alias, and only then swaps the serving reference, in order with traffic (``in_order``), telling
``on_swap`` so that the detectors start over at the same record. A crash between the alias move
and the swap serves the new champion after the restart, as intended; a crash before the alias
move leaves the old one. At start the champion is loaded, or, when it fails verification, the
newest version that passes, and the audit log says so. A version's calibrator is verified and
parsed with its model (:meth:`Registry.calibrator`); one that fails, or was fitted for other
classes, refuses the version as a tampered artifact would.

After each deploy it deletes the versions the retention rule (:mod:`driftd.models.retention`)
lets go, each in the registry's one rename, then a ``model_deleted`` event, then the removal;
a crash between the rename and the event is completed at the next start. Deploys, rollbacks and
deletions take one lock, so a rollback never races the deletion of its target.

It never exposes a half-loaded model: :attr:`current` is one reference, replaced whole.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from driftd.errors import IntegrityError, NotLeader, StoreUnavailable
from driftd.ingest.schema import Schema
from driftd.metrics import Metrics
from driftd.models.calibration import Calibrator
from driftd.models.inputs import rows_to_matrix
from driftd.models.registry import ModelRegistry, Version
from driftd.models.retention import Retention
from driftd.models.serving import LiveModel, Serving, WarmupError
from driftd.store import RecordStore

__all__ = ["Lifecycle", "Loader"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Audit-log events that move the champion alias.
MOVES = ("deploy", "rollback", "model_fallback")


class Loader(Protocol):
    """Loads verified artifact bytes elsewhere (the training worker) and returns the model, or
    ``None`` when it cannot now; raises :class:`IntegrityError` for bytes it refuses."""

    def __call__(
        self, data: bytes, /, *, extra_trusted: Iterable[str], cancel: threading.Event
    ) -> Any: ...


def _now(fn: Callable[[], T]) -> T:
    return fn()


class Lifecycle:
    """Which version serves, and every change of it. :meth:`open` before use.

    Parameters
    ----------
    registry, serving, store
        Where versions live, the reference requests read, and the audit log.
    in_order
        Runs a callable in order with traffic and returns its result (the engine's ingest
        worker); the swap and ``on_swap`` run there together. Default: at once, here.
    on_swap
        Called in order with traffic right after each swap (the monitor rebaselines).
    loader
        Loads artifacts out of process (the training worker); any failure there loads here.
    keep_previous
        Keep the champion a swap replaces loaded, so that rolling back to it is a swap.
    retention
        Which versions a deploy leaves in the registry (``[model] keep_versions``, ``pinned``).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        serving: Serving,
        store: RecordStore,
        metrics: Metrics,
        schema: Schema,
        *,
        loader: Loader | None = None,
        keep_previous: bool = True,
        retention: Retention | None = None,
        in_order: Callable[[Callable[[], Any]], Any] = _now,
        on_swap: Callable[[], None] = lambda: None,
        cancel: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = registry
        self.serving = serving
        self.store = store
        self.metrics = metrics
        self.schema = schema
        self.loader = loader
        self.keep_previous = keep_previous
        self.retention = retention if retention is not None else Retention()
        self.in_order = in_order
        self.on_swap = on_swap
        self.cancel = cancel if cancel is not None else threading.Event()
        self.clock = clock
        self.leading = leading  # on a shared registry, only the leader moves its aliases
        self._load_failures: list[str] = []
        self._refused: set[int] = set()  # champions a refresh refused (a standby reports once)
        self._fallback: str | None = None
        self._previous: LiveModel | None = None  # the champion before the last swap, loaded
        self._moves = threading.RLock()  # one deploy, rollback or deletion at a time

    # -- reads -----------------------------------------------------------------------------
    @property
    def current(self) -> LiveModel | None:
        """The serving model, or None before the first one."""
        return self.serving.current

    @property
    def previous(self) -> LiveModel | None:
        """The champion the last swap replaced, still loaded (``keep_previous``), or None: what
        the post-deploy guard scores in shadow, and what a rollback to it swaps back in."""
        return self._previous

    @property
    def load_failures(self) -> tuple[str, ...]:
        """Versions refused at start, with why."""
        return tuple(self._load_failures)

    def status(self) -> dict[str, Any] | None:
        live = self.serving.current
        if live is None:
            return None
        return {
            "version": live.version,
            "estimator": live.manifest.get("estimator"),
            "created": live.manifest.get("created"),
            "reason": live.manifest.get("reason"),
            "metrics": live.manifest.get("metrics"),
            "calibration": live.manifest.get("calibration"),
            "loaded_at": live.loaded_at,
            "fallback": self._fallback,
        }

    def models(self) -> dict[str, Any]:
        """The registry's versions (newest first, without warm-up rows) and aliases."""
        live = self.serving.current
        return {
            "aliases": self.registry.aliases().as_dict(),
            "serving": live.version if live else None,
            "versions": [
                {k: v for k, v in ver.manifest.items() if k != "warmup"}
                for ver in reversed(self.registry.versions())
            ],
        }

    # -- start -----------------------------------------------------------------------------
    def open(self, *, standby: bool = False) -> None:
        """Sweep leftovers of a crash, serve the champion (or the newest valid version), and
        complete the audit log if a crash fell between an alias move, or a deletion, and its
        event. A ``standby`` of a shared registry only serves the champion: the registry and
        its log are the leader's (:meth:`take_over`)."""
        if standby:
            self.refresh()
        else:
            self._record_deletions(self.registry.retired())
            self.registry.sweep()
            self._load_champion()
            self._reconcile_history()
        changed = self.registry.changed_at()
        if self.serving.current is not None and changed is not None:
            self.metrics.deployed_at.set(changed)

    def take_over(self) -> None:
        """A standby became the leader: serve the champion as a start would (falling back,
        with its event, to the newest version that loads), and complete the audit log."""
        with self._moves:
            self._refused.clear()
            self.refresh()
            live = self.serving.current
            if live is None or live.version != self.registry.aliases().champion:
                self._load_champion()
            self._reconcile_history()

    def refresh(self) -> bool:
        """Serve the registry's champion if another daemon moved it (a standby's poll): the
        version is verified, loaded and warmed up like any, then swapped in order with
        traffic. True if the serving model changed. A champion that fails is reported once
        and the current model keeps serving."""
        champion = self.registry.aliases().champion
        live = self.serving.current
        if champion is None or (live is not None and live.version == champion):
            return False
        if champion in self._refused:
            return False
        try:
            new = self._load(champion)
        except (IntegrityError, WarmupError) as exc:
            self._refused.add(champion)
            self.metrics.model_load_failures.inc()
            log.error("refusing model v%06d: %s", champion, exc)
            return False
        self.in_order(lambda: self._serve(new))
        log.info("serving v%06d, the champion another daemon deployed", champion)
        return True

    def _load_champion(self) -> None:
        aliases = self.registry.aliases()
        numbers = self.registry.numbers()
        order = ([aliases.champion] if aliases.champion in numbers else []) + [
            n for n in reversed(numbers) if n != aliases.champion
        ]
        for number in order:
            try:
                live = self._load(number)
            except (IntegrityError, WarmupError) as exc:
                self.metrics.model_load_failures.inc()
                self._load_failures.append(f"v{number:06d}: {exc}")
                log.error("refusing model v%06d: %s", number, exc)
                self._event("model_load_failed", {"version": number, "error": str(exc)})
                continue
            if number != aliases.champion:
                why = (
                    f"champion v{aliases.champion:06d} failed to load; serving v{number:06d}"
                    if aliases.champion is not None
                    else f"no champion alias; serving the newest valid version v{number:06d}"
                )
                self._fallback = why
                log.warning("%s", why)
                self.registry.set_champion(
                    number, event=("model_fallback", {"reason": why}), record=self._event
                )
            self._serve(live)
            return
        if numbers:
            log.error("no model version in %s could be loaded", self.registry.where)

    def _reconcile_history(self) -> None:
        champion = self.registry.aliases().champion
        moves = [e for kind in MOVES for e in self.store.events(kind=kind, limit=1)]
        last = max(moves, key=lambda e: e.id).data.get("version") if moves else None
        if champion is not None and last != champion:
            self._event(
                "deploy",
                {"version": champion, "reason": "recovered", "recovered": True, "previous": last},
            )

    def _record_deletions(self, numbers: list[int]) -> None:
        """Deletions a crash cut short after their rename: the versions are gone, so make sure
        the audit log says so. A crash leaves at most one, and its event, if written, is the
        newest (before the sweep, so that a crash here too loses no event)."""
        if not numbers:
            return
        recorded = {
            e.data.get("version")
            for e in self.store.events(kind="model_deleted", limit=len(numbers))
        }
        for number in numbers:
            if number not in recorded:
                self._event(
                    "model_deleted", {"version": number, "reason": "retention", "recovered": True}
                )

    # -- changes ---------------------------------------------------------------------------
    def deploy(
        self,
        artifact: bytes,
        manifest: dict[str, Any],
        warmup: Any,
        *,
        model: Any = None,
        calibration: bytes | None = None,
    ) -> Version:
        """Publish ``artifact`` (with its ``calibration``, if any) as a new version and serve it.

        ``model`` is ``artifact`` already loaded (by the training process, with the same trusted
        types): then only the published bytes are read back and verified, and that object
        serves, so the serving process does not spend the load's GIL time beside requests.
        The calibrator is always read back from the version, verified and parsed here: it is
        small, and what serves is then what the registry holds.
        Then the versions retention lets go are deleted."""
        with self._moves:
            self._check_leading("deploy")
            version = self.registry.publish(artifact, manifest, calibration=calibration)
            live = self._load(version.number, warmup, model=model)
            details = {"reason": manifest.get("reason"), "job": manifest.get("job")}
            self._switch(live, "deploy", details)
            log.info("deployed v%06d (%s)", version.number, manifest.get("reason"))
            self._prune()
        return version

    def rollback(self, version: int | None, *, details: dict[str, Any]) -> tuple[int, int | None]:
        """Serve ``version`` (default: the previous champion) again; returns (to, from).

        Raises ValueError when there is nothing to roll back to, IntegrityError or WarmupError
        when the target fails verification or warm-up. The previous champion is a swap when it
        is still loaded (verified and warmed up when it was)."""
        with self._moves:
            self._check_leading("roll back")
            aliases = self.registry.aliases()
            target = version if version is not None else aliases.previous
            if target is None:
                raise ValueError("there is no previous version to roll back to")
            self._check_exists(target)
            if target == aliases.champion:
                raise ValueError(f"version {target} is already the champion")
            kept = self._previous
            if kept is not None and kept.version == target:
                live = dataclasses.replace(kept, loaded_at=self.clock())
            else:
                live = self._load(target)
            self._switch(live, "rollback", {"from": aliases.champion, **details})
            return target, aliases.champion

    def _check_leading(self, what: str) -> None:
        """Refuse a change of the shared registry from a daemon that no longer leads (one
        that lost its lock while a fit ran)."""
        if not self.leading():
            raise NotLeader(f"cannot {what}: this daemon no longer leads its model")

    def _check_exists(self, target: int) -> None:
        """Refuse a version that is not in the registry, saying whether it ever was: numbers
        are given in order, so a missing one below the newest was deleted."""
        numbers = self.registry.numbers()
        if target in numbers:
            return
        if numbers and 0 < target < numbers[-1]:
            rule = self.retention
            raise ValueError(
                f"version {target} was deleted from the registry: retention keeps the champion,"
                f" the previous champion, the pinned versions ({sorted(rule.pinned)}) and the"
                f" newest {rule.keep_versions} ([model] pinned, keep_versions)"
            )
        raise ValueError(f"version {target} does not exist")

    def _prune(self) -> None:
        """Delete what retention lets go: each version in one rename (after which it is neither
        listed nor loadable), its ``model_deleted`` event, then the removal. A failure is
        logged, never raised: the deploy it follows has happened."""
        aliases = self.registry.aliases()
        live = self.serving.current
        serving = live.version if live is not None else None
        doomed = self.retention.doomed(
            self.registry.numbers(), protected=(aliases.champion, aliases.previous, serving)
        )
        for number in doomed:
            details = {"reason": "retention", "keep_versions": self.retention.keep_versions}
            event = ("model_deleted", {"version": number, **details})
            try:
                retired = self.registry.retire(number, event=event, record=self._event)
            except (OSError, StoreUnavailable) as exc:
                log.error("could not delete model v%06d: %s", number, exc)
                continue
            log.info("deleted model v%06d (retention)", number)
            try:
                self.registry.purge(retired)
            except OSError as exc:  # out of the registry already; swept at the next start
                log.warning("could not remove %s yet: %s", retired.name, exc)

    def _switch(self, live: LiveModel, event: str, details: dict[str, Any]) -> None:
        """Move the alias with its audit event (here: its fsyncs or its transaction must not
        hold up traffic waiting in order), then, in order with traffic, swap the reference and
        call ``on_swap``."""
        self.registry.set_champion(live.version, event=(event, details), record=self._event)

        def swap() -> None:
            self._fallback = None
            self._serve(live)
            self.on_swap()

        self.in_order(swap)
        self.metrics.deployed_at.set(self.clock())

    def _serve(self, live: LiveModel) -> None:
        old = self.serving.swap(live)
        self._previous = old if self.keep_previous else None
        self.metrics.set_model(live.version, live.manifest)

    # -- loading ---------------------------------------------------------------------------
    def _load(self, number: int, warmup: Any = None, *, model: Any = None) -> LiveModel:
        """Verify a version's bytes, load them (unless ``model`` is them already loaded), warm
        the model up."""
        version, data = self.registry.read(number)
        if model is None and self.loader is not None:
            try:
                model = self.loader(
                    data, extra_trusted=self.registry.extra_trusted, cancel=self.cancel
                )
            except IntegrityError as exc:
                raise IntegrityError(f"{version.name}: {exc}") from exc
            except Exception:  # whatever went wrong there, load it here
                log.exception(
                    "loading %s in the training worker failed; loading it here", version.name
                )
        if model is None:
            model = self.registry.loads(version, data)
        calibrator = self.registry.calibrator(version)
        live = LiveModel(number, model, version.manifest, self.clock(), calibrator)
        _check_classes(version, live, calibrator)
        live.warm_up(warmup if warmup is not None else self._warmup_rows(version))
        return live

    def _warmup_rows(self, version: Version) -> Any:
        rows = version.manifest.get("warmup") or []
        if not rows:
            raise WarmupError(f"{version.name}: manifest has no warm-up rows")
        try:
            return rows_to_matrix(self.schema, rows)
        except (KeyError, ValueError, TypeError) as exc:
            raise WarmupError(
                f"{version.name}: warm-up rows do not match the schema ({exc})"
            ) from exc

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        self.store.add_event(kind, data, ts=self.clock())


def _check_classes(version: Version, live: LiveModel, calibrator: Calibrator | None) -> None:
    """Refuse a calibrator fitted for other classes than its model's: its maps would calibrate
    the wrong columns."""
    if calibrator is not None and calibrator.classes != live.class_names():
        raise IntegrityError(
            f"{version.name}: calibration is for classes {list(calibrator.classes)},"
            f" the model has {live.class_names()}"
        )
