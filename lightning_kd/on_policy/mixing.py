"""``GeneratedBatches``: which training batches the models write, and writing them.

A method built with ``on_policy`` (λ) and/or ``sequence_kd`` holds one of these
(``method.generated_batches``); its training step asks it for the batch to train on:

* with probability λ the **student** continues the batch's prompts (GKD's on-policy samples), and every
  term of the method that compares with a teacher reads the generated tokens: the teacher scores them,
  the divergence runs on them only (the prompt and whatever follows the EOS are unscored), intermediate
  terms read the same positions. The hard term is left out (the student's own tokens are no targets);
* else, with probability ``sequence_kd.probability``, the **teacher** writes the responses (Kim & Rush's
  sequence-level KD), read from its on-disk cache when ``sequence_kd.cache`` (:mod:`~lightning_kd.on_policy.responses`);
* else the data's responses are used as they are.

The choices and the samples are seeded from (run seed, step, batch index, and the rank for samples):
:mod:`~lightning_kd.on_policy.seeds`. Only the run seed goes into checkpoints.

Under DDP each process writes its own batch. When a writer's parameters are partitioned across
processes (DeepSpeed ZeRO-3: the student under stage 3, a teacher placed ``zero3``), every process decodes
together with ``generate(synced_gpus=True)``, which keeps each one running forward passes (gathering the
parameters layer by layer) until all are done; the choices are the same on every process, so all of
them generate at the same steps.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pytorch_lightning import Callback
from torch import Tensor

from lightning_kd.compat import attached_trainer
from lightning_kd.data.collators import EXAMPLE_INDEX
from lightning_kd.on_policy.decoding import SpecialTokens, continue_prompts, special_tokens
from lightning_kd.on_policy.prompts import Prompts, prompts_of
from lightning_kd.on_policy.responses import TeacherResponses
from lightning_kd.on_policy.seeds import RunSeed, chosen, sampling_seed
from lightning_kd.on_policy.settings import Generation, SequenceKD
from lightning_kd.on_policy.written import continuation_lengths, written_batch


class GeneratedBatches:
    """Training batches written by the student (on-policy) and the teacher (sequence-level KD).

    Args:
        on_policy: λ, the share of training batches the student writes (0 = none, 1 = every one).
        generation: how the student decodes on those batches (default :class:`Generation`: sampling at
            temperature 1, up to 64 new tokens).
        sequence_kd: the teacher writes the responses of (a share of) the other batches.

    Raises:
        ValueError: λ outside ``[0, 1]``, ``generation`` without on-policy batches, or nothing to generate.
    """

    def __init__(self, on_policy: float = 0.0, generation: Generation | None = None, sequence_kd: SequenceKD | None = None) -> None:
        if not 0 <= on_policy <= 1:
            raise ValueError(f"on_policy must be in [0, 1] (the share of training batches the student writes), got {on_policy}.")
        if generation is not None and on_policy == 0:
            raise ValueError("generation sets how the student samples on-policy batches, but on_policy is 0: set on_policy > 0 or remove generation.")
        if on_policy >= 1 and sequence_kd is not None:
            raise ValueError("on_policy 1 makes the student write every batch, leaving none for sequence_kd: lower on_policy or remove sequence_kd.")
        if on_policy == 0 and sequence_kd is None:
            raise ValueError("Nothing to generate: set on_policy > 0 or sequence_kd.")
        self.on_policy = float(on_policy)
        self.generation = generation if generation is not None else Generation()
        self.sequence_kd = sequence_kd
        self.run_seed = RunSeed()
        self.tokens: SpecialTokens | None = None
        self.responses: TeacherResponses | None = None
        #: Seconds spent generating since the fit started, and in the latest training step.
        self.seconds, self.step_seconds = 0.0, 0.0
        #: Who wrote the latest training batch: ``"student"``, ``"teacher"`` or ``None`` (the data).
        self.last_writer: str | None = None
        self._hooks = _ResponseHooks(self)

    @staticmethod
    def build(on_policy: float, generation: Generation | None, sequence_kd: SequenceKD | None) -> GeneratedBatches | None:
        """The object for a method's arguments, or ``None`` when they generate nothing (λ = 0, no sequence-level KD)."""
        if on_policy == 0 and generation is None and sequence_kd is None:
            return None
        return GeneratedBatches(on_policy, generation, sequence_kd)

    def __repr__(self) -> str:
        return f"GeneratedBatches(on_policy={self.on_policy}, generation={self.generation}, sequence_kd={self.sequence_kd})"

    def __getstate__(self) -> dict[str, Any]:
        # Open files stay in their process (ddp_spawn pickles the method); a worker reopens them at setup.
        return {**self.__dict__, "responses": None}

    @property
    def knob(self) -> str:
        """The argument that asked for generation, for messages."""
        return "on_policy" if self.on_policy else "sequence_kd"

    # ------------------------------------------------------------------ checks
    def check_method(self, method: Any) -> None:
        """Refuse, when the method is built, a method or knob with which generated batches cannot be right,
        and resolve the EOS and pad tokens (from the method's tokenizer, else the student's generation config).

        Raises:
            ValueError: another stage than the causal LM's, no teacher, a teacher cache, a method that
                cannot train on its student's samples, or a hard term that would never apply.
        """
        name, knob = type(method).__name__, self.knob
        stage = method.task_stage
        if not stage.generative:
            raise ValueError(
                f"{knob} continues the prompts of a decoder LM's batches (the causal-LM stage); {name} runs the "
                f"{stage.description} stage. Remove {knob}."
            )
        if not len(method.teachers):
            raise ValueError(f"{knob} needs a teacher (to score the student's tokens, or to write responses); {name} has none. Remove {knob}.")
        if method.teacher_cache is not None:
            kept = " (sequence_kd.cache keeps the teacher's responses)" if self.sequence_kd is not None else ""
            raise ValueError(f"{knob} changes the teacher's inputs from step to step, which a teacher cache cannot serve: remove teacher_cache{kept}.")
        if self.on_policy:
            reason = getattr(method, "on_policy_refused", None)
            if reason:
                raise ValueError(f"{name} cannot train on its student's samples: {reason}. Remove on_policy.")
            if self.on_policy >= 1 and method.uses_student_loss():
                raise ValueError(
                    "on_policy 1 makes the student write every training batch, and the hard (next-token) term does not apply to "
                    "the student's own tokens: set prediction.hard_weight 0, or on_policy below 1."
                )
        if self.sequence_kd is not None and self.sequence_kd.teacher_index >= len(method.teachers):
            raise ValueError(f"sequence_kd.teacher_index is {self.sequence_kd.teacher_index} but {name} has {len(method.teachers)} teacher(s).")
        self.tokens = special_tokens(method.tokenizer_source, method.student)

    def setup(self, method: Any, trainer: Any, datamodule: Any) -> None:
        """At fit start: bind the run seed, check the data, open the response cache.

        Raises:
            ValueError: data without prompts, prompts plus new tokens longer than a model reads, or a
                response cache the data cannot key.
            StaleResponsesError: the response cache was written under another key.
        """
        from lightning_kd.core.sequence_length import data_length, longest_input

        self.run_seed.bind(trainer)
        self.seconds = 0.0
        if datamodule is not None and getattr(datamodule, "has_prompts", True) is False:
            raise ValueError(
                f"{self.knob} continues the prompts of prompt/response examples, but this data is packed plain text (no prompts): "
                "give the data prompt_field/response_field or messages_field (e.g. train_files: [embedded:chitchat])."
            )
        found = data_length(datamodule) if datamodule is not None else None
        if found is not None:
            name, length = found
            new_tokens = max(self.generation.max_new_tokens if self.on_policy else 0,
                             self.sequence_kd.max_new_tokens if self.sequence_kd is not None else 0)
            models = [("the student", method.student)] + [(f"teacher {i}", t) for i, t in enumerate(method.teachers)]
            for role, model in models:
                limit = longest_input(model.config)
                if limit is not None and length - 1 + new_tokens > limit:
                    raise ValueError(
                        f"A prompt of up to {length - 1} tokens ({name} {length}) plus {new_tokens} new tokens is longer than "
                        f"{role} reads ({limit}); lower data.init_args.{name} or max_new_tokens."
                    )
        if self.sequence_kd is not None and self.sequence_kd.cache:
            self.responses = self._open_responses(method, trainer, datamodule)

    def _open_responses(self, method: Any, trainer: Any, datamodule: Any) -> TeacherResponses:
        from lightning_kd.cache.fingerprint import config_digest, precision_of, tokenizer_digest, weights_digest

        settings = self.sequence_kd
        try:
            dataset = getattr(datamodule, "fingerprint", None)
        except ValueError as error:  # e.g. a streamed corpus, whose rows have no stable index
            raise ValueError(f"sequence_kd.cache keys each response by its training example: {error} Set sequence_kd.cache false.") from None
        if dataset is None:
            raise ValueError(
                "sequence_kd.cache keys responses by the training data's fingerprint, which this data module does not give: "
                "use CausalLMDataModule or set sequence_kd.cache false."
            )
        teacher = method.teachers[settings.teacher_index]
        tokenizer = getattr(datamodule, "tokenizer", None)
        key = {
            "teacher_config": config_digest(teacher), "teacher_weights": weights_digest(teacher), "teacher_precision": precision_of(teacher),
            "tokenizer": tokenizer_digest(tokenizer) if tokenizer is not None else None, "dataset": dataset,
            "generation": settings.generation.describe(), "eos_ids": list(self.tokens.eos_ids),
        }
        root = settings.path or f"{getattr(trainer, 'default_root_dir', '.')}/teacher_responses"
        return TeacherResponses(root, key, rank=getattr(trainer, "global_rank", 0))

    # ------------------------------------------------------------------ the step
    def training_batch(self, method: Any, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """The batch to train on at this step: written by the student, by the teacher, or ``batch`` itself."""
        trainer = attached_trainer(method)
        step, rank = method.global_step, getattr(trainer, "global_rank", 0) if trainer is not None else 0
        seed = self.run_seed.get()
        self.step_seconds, self.last_writer = 0.0, None
        if self.on_policy and chosen(seed, "on_policy", self.on_policy, step, batch_idx):
            return self.student_batch(method, batch, sampling_seed(seed, "on_policy", rank, step, batch_idx))
        if self.sequence_kd is not None and chosen(seed, "sequence_kd", self.sequence_kd.probability, step, batch_idx):
            return self.teacher_batch(method, batch, sampling_seed(seed, "sequence_kd", rank, step, batch_idx))
        return batch

    def student_batch(self, method: Any, batch: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
        """``batch``'s prompts continued by the student (sampled with ``seed``)."""
        tokens = self._tokens(method)
        prompts = prompts_of(batch, tokens.pad_id)
        start = time.perf_counter()
        continuations = continue_prompts(method.student, prompts, self.generation, tokens, seed=seed, device=method.device,
                                         synced=_partitioned_student(method))
        self._spent(start, "student")
        return written_batch(prompts, continuations, continuation_lengths(continuations, tokens.eos_ids), tokens.pad_id,
                             writer="student", extra=_per_row(batch))

    def teacher_batch(self, method: Any, batch: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
        """``batch``'s prompts continued by the sequence-level KD teacher: from the response cache where it has
        them, the rest decoded now (with ``seed``) and added to it."""
        tokens = self._tokens(method)
        prompts = prompts_of(batch, tokens.pad_id)
        index = self.sequence_kd.teacher_index
        synced = method.resolved_placement(index) == "zero3" and _world_size() > 1
        start = time.perf_counter()
        if self.responses is None:
            continuations = self._teacher_writes(method, prompts, seed, synced).to(method.device)
            lengths = continuation_lengths(continuations, tokens.eos_ids)
        else:
            continuations, lengths = self._cached_responses(method, batch, prompts, seed, synced)
        self._spent(start, "teacher")
        return written_batch(prompts, continuations, lengths, tokens.pad_id, writer="teacher", extra=_per_row(batch))

    def _teacher_writes(self, method: Any, prompts: Prompts, seed: int, synced: bool) -> Tensor:
        teacher, device = method.place_teacher(self.sequence_kd.teacher_index)
        return continue_prompts(teacher, prompts, self.sequence_kd.generation, self._tokens(method), seed=seed, device=device, synced=synced)

    def _cached_responses(self, method: Any, batch: dict[str, Tensor], prompts: Prompts, seed: int, synced: bool) -> tuple[Tensor, Tensor]:
        examples = batch.get(EXAMPLE_INDEX)
        if examples is None:
            raise ValueError(
                f"sequence_kd.cache keys responses by each row's {EXAMPLE_INDEX}, which this batch lacks (streamed data?): "
                "set sequence_kd.cache false."
            )
        examples = [int(e) for e in examples.tolist()]
        asked = [prompts.prompt(row).tolist() for row in range(len(prompts))]
        found = [self.responses.get(example, prompt) for example, prompt in zip(examples, asked)]
        missing = [row for row, response in enumerate(found) if response is None]
        # Partitioned teachers decode together: a process with nothing missing joins with one row it discards.
        if missing or (synced and _any_process(bool(missing), method.device)):
            rows = missing or [0]
            written = self._teacher_writes(method, prompts.select(torch.tensor(rows)), seed, synced)
            kept = continuation_lengths(written, self._tokens(method).eos_ids)
            for position, row in enumerate(missing):
                found[row] = written[position, : int(kept[position])].tolist()
                self.responses.add(examples[row], asked[row], found[row])
        lengths = torch.tensor([len(response) for response in found], device=method.device)
        continuations = torch.full((len(found), int(lengths.max())), self._tokens(method).pad_id, dtype=torch.long, device=method.device)
        for row, response in enumerate(found):
            continuations[row, : len(response)] = torch.tensor(response, dtype=torch.long)
        return continuations, lengths

    def _tokens(self, method: Any) -> SpecialTokens:
        if self.tokens is None:
            self.tokens = special_tokens(method.tokenizer_source, method.student)
        return self.tokens

    def _spent(self, start: float, writer: str) -> None:
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.step_seconds += seconds
        self.last_writer = writer

    # ------------------------------------------------------------------ run state
    @property
    def callback(self) -> Callback:
        """Commits the response cache when Lightning makes a run durable (the method returns it from ``configure_callbacks``)."""
        return self._hooks

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to choose and sample as the uninterrupted one: the run seed."""
        return self.run_seed.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_seed.load_state_dict(state)


class _ResponseHooks(Callback):
    """Writes new teacher responses at the points Lightning makes a run durable, and reads the other processes' ones."""

    def __init__(self, batches: GeneratedBatches) -> None:
        self.batches = batches

    def _commit(self) -> None:
        if self.batches.responses is not None:
            self.batches.responses.commit()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._commit()
        trainer.strategy.barrier("teacher_responses_commit")  # every process's responses are on disk before anyone reads
        if self.batches.responses is not None:
            self.batches.responses.refresh()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._commit()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._commit()  # responses written so far are complete; keep them

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._commit()


def _per_row(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch's row identities, carried into the generated batch."""
    return {EXAMPLE_INDEX: batch[EXAMPLE_INDEX]} if EXAMPLE_INDEX in batch else {}


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _partitioned_student(method: Any) -> bool:
    """Whether the student's parameters are partitioned across processes (ZeRO-3 with several)."""
    from lightning_kd.core.placement import deepspeed_stage

    return deepspeed_stage(attached_trainer(method)) == 3 and _world_size() > 1


def _any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any process (one all-reduce)."""
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
