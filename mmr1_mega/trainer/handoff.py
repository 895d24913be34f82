"""Colocation: the actor (and the KL reference) and the rollout engines share the accelerators. The
order in which they hand memory to each other, in one place:

    engine generates                      actor parked: parameters, gradients, optimizer state on the host
    to_actor():    engine.release_memory()        weights + KV cache freed (every server)
                   actor.onload(), reference.onload()
    actor computes log-probs and trains
    to_engine():   reference.offload(); actor.offload(keep_params=True)   gradients + optimizer state out
                   engine.resume_memory()         the engine's memory back
                   weight sync                    needs the actor's parameters on the device
                   actor.offload()                parameters out too: the engine generates next

    checkpoint:    actor.onload(), save, park()   the state is saved from where it computes

The engine calls happen where the servers' owners live (rank 0, or each node's local rank 0 when engines are
placed per node) as phases every rank waits for, so no rank touches the memory before the engine has let go. to_engine() parks the actor in a `finally`, so a failed sync never
leaves the actor holding the engine's memory.
Active only with colocated server engines (rollout.colocate and engine sglang / vllm); with the
in-process local engine, or engines on GPUs of their own, the steps are plain calls.
"""

from __future__ import annotations

from collections.abc import Callable


class Handoff:
    """to_actor() before the actor computes, to_engine(sync) to sync and give the engine the memory."""

    def __init__(self, run, cfg):
        self.run = run
        self.active = bool(cfg.rollout.colocate and cfg.rollout.engine != "local")

    def _models(self):
        return [m for m in (self.run.actor, self.run.reference) if m is not None]

    def park(self) -> None:
        """Everything of the actor and the reference to the host: before the engines start, after a
        checkpoint."""
        if self.active:
            for m in self._models():
                m.offload()

    def to_actor(self) -> None:
        """The engine lets go of its memory; the actor and the reference come back to the device."""
        if not self.active:
            return
        self.run.engine_phase("engine releases memory", "release_memory")
        for m in self._models():
            m.onload()

    def to_engine(self, sync: Callable[[], dict]) -> dict:
        """Weights into the engine, which gets the memory back; returns sync's metrics."""
        if not self.active:
            return sync()
        actor = self.run.actor
        actor.onload()  # the sync reads the parameters (a no-op after training)
        try:
            if self.run.reference is not None:
                self.run.reference.offload()
            actor.offload(keep_params=True)
            self.run.engine_phase("engine resumes memory", "resume_memory")
            metrics = sync()
        finally:
            actor.offload()
        return metrics
