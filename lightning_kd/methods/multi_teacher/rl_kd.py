"""RL-KD — Yuan, Shou, Pei, Lin, Gong, Fu and Jiang (2021), "Reinforced Multi-Teacher Selection for
Knowledge Distillation" (AAAI 2021).

Two fine-tuning stages:

1. ``stage="average"``: the plain mean over teachers (the student warms up on every teacher).
2. ``stage="rl"``: a small agent decides, per example and per teacher, whether the student learns
   from that teacher. Its state is the semantic encoder's [CLS] vector of the example, each
   teacher's own gold loss on it and each teacher's logits; ``σ_{b,i} = sigmoid(f1([sem; ℓ^T]) +
   f2([z^T_1; …]))`` and the action is ``a_{b,i} ~ Bernoulli(σ_{b,i})``. The student's loss is
   ``mean_{b,i} a_{b,i}·ℓ_{i,b}`` (divided by ``B·N``, not by the number of selected pairs) where
   ``ℓ_{i,b}`` is the sum of teacher ``i``'s per-example terms (the soft one always; any other a
   method gives per example, read by shape, never by name) plus its scalar terms, which are the same
   for every example.

The agent is trained one step late: the state and action of the previous step are kept, and the
current step's reward ``R = −L_hard`` (the student's unweighted task loss on the current batch,
detached) scores them: ``π = σ'·a + (1−σ')·(1−a)`` with ``σ'`` recomputed by the current agent, and

* ``objective="reference_prob"`` (GKD parity): ``L_agent = −(Σ_{b,i} π)·R``;
* ``objective="reinforce_logprob"`` (the paper's REINFORCE): ``L_agent = −(Σ_{b,i} log π)·(R − baseline)``.

The agent term is returned as its own loss term, ``"agent"`` (× ``agent_weight``, role ``STRATEGY``). Its inputs are
all detached teacher/encoder tensors and ``R`` is detached, so its gradient reaches only the agent;
the actions that weight the student's terms are samples (no gradient), so the student's terms never
reach the agent. The hard loss is the method's own term (``hard_weight``), added once.

Where we differ from the GKD reference (``--multi_teacher_model=rl_kd``), and why:

* **The semantic encoder is a strategy argument, not a teacher** (``semantic_model``): it takes no
  part in any loss, and a pre-trained encoder without the task's head cannot be a teacher here.
  It is frozen, kept in eval mode, left out of checkpoints and of the optimizer.
* The agent's shape needs ``num_teachers`` and ``num_classes`` at construction (the optimizer is
  built before the first step); both are checked against what arrives.
* ``objective="reinforce_logprob"``, ``baseline_momentum`` and ``reward="student_and_teachers"`` are
  options the reference lacks (the spec's recommendation); the defaults are the reference's.
  ``reward="student_and_last_teacher"`` is the reference's ``--rl_kd_reward=2`` (the batch gold loss
  of the last teacher only, a leaked loop variable there); ``"student_and_teachers"`` uses the mean
  gold loss over the selected (example, teacher) pairs instead.
* ``--rl_kd_alpha`` is the method's weights: ``soft_weight = alpha``, ``hard_weight = 1 − alpha``,
  ``agent_weight = alpha``. ``--rl_kd_wo_hard`` is ``hard_weight: 0``.
* Multiple-choice inputs ``(B, K, N)`` concatenate the ``K`` [CLS] vectors; ``semantic_dim`` pads or
  truncates to a fixed width as the reference does (``--rl_kd_semantic_model_dim``).
* The "[CLS] vector" is chosen by ``semantic_pooling`` (:mod:`lightning_kd.core.pooling`): ``auto`` is
  the first token of an encoder (the reference) and the last real token of a decoder LM, whose first
  position sees only itself.
* The stored state is not checkpointed: after a resume the first step trains no agent (as in the
  reference). The agent gets a zero-valued term on such steps so DDP still sees its parameters used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_kd.core.features import model_inputs
from lightning_kd.core.logit_rows import LogitRows, mean_per_example, widest
from lightning_kd.core.multi_teacher import Average, MultiTeacherStrategy, TeacherStep
from lightning_kd.core.pooling import Pooling, pool, resolve_pooling
from lightning_kd.core.teachers import freeze
from lightning_kd.core.terms import LossTerms, Role, typed
from lightning_kd.methods.multi_teacher.mt_bert import teacher_gold_loss
from lightning_kd.methods.multi_teacher.uncertainty import Positions, position_mask, position_rows
from lightning_kd.models.loading import ModelSource
from lightning_kd.stages.labelled_rows import LABELLED

Objective = Literal["reference_prob", "reinforce_logprob"]
Reward = Literal["student", "student_and_teachers", "student_and_last_teacher"]


class RLAgent(nn.Module):
    """Keep/drop probabilities ``σ_{b,i}`` of each teacher for each example.

    Args:
        semantic_dim: width of the semantic state (0: none).
        num_teachers: number of teachers scored.
        num_classes: width of one teacher's logits.
    """

    def __init__(self, semantic_dim: int, num_teachers: int, num_classes: int) -> None:
        super().__init__()
        self.state_layer = nn.Linear(semantic_dim + num_teachers, num_teachers)
        self.logits_layer = nn.Linear(num_classes * num_teachers, num_teachers)

    def forward(self, semantic: Tensor, teacher_losses: Tensor, teacher_logits: Tensor) -> Tensor:
        """``(B, D)``, ``(B, N)`` and ``(B, C·N)`` → ``σ`` of shape ``(B, N)``."""
        return torch.sigmoid(self.state_layer(torch.cat([semantic, teacher_losses], dim=1)) + self.logits_layer(teacher_logits))


class RLKD(MultiTeacherStrategy):
    """Reinforced teacher selection: an agent keeps or drops each teacher for each example.

    Args:
        stage: ``"average"`` (stage 1, GKD ``--rl_kd_only_avg``: the mean over teachers; no agent,
            so the agent arguments must stay unset) or ``"rl"`` (stage 2: agent-selected teachers).
        num_teachers: number of teachers (``rl`` stage; sizes the agent).
        num_classes: width of the teachers' logits: the task's label count (vocabulary size for MLM
            logits); ``rl`` stage.
        semantic_model: frozen encoder whose final pooled vector (``semantic_pooling``: [CLS] on
            encoders) is the agent's semantic state (GKD ``--rl_kd_semantic_model``: the teachers'
            pre-trained, not fine-tuned, base). It reads the same token ids, so it must share the
            student's tokenizer. ``None``: no semantic state.
        semantic_dim: pad/truncate the semantic state to this width (GKD ``--rl_kd_semantic_model_dim``);
            default: the encoder's width (for multiple-choice inputs give width × choices, else the
            concatenated vectors are truncated to one width).
        semantic_pooling: which vector of the semantic encoder's last layer is the state: ``"auto"``
            (the first token — [CLS] — of an encoder, the last real token of a causal LM), ``"first"``,
            ``"last"`` or ``"mean"`` (over real tokens); see :mod:`lightning_kd.core.pooling`. Needs
            ``semantic_model``.
        objective: agent objective: ``"reference_prob"`` (GKD) or ``"reinforce_logprob"`` (paper).
        reward: ``"student"`` (``R = −L_hard``, GKD ``--rl_kd_reward=1``), ``"student_and_teachers"``
            (also minus the mean gold loss of the selected teachers) or ``"student_and_last_teacher"``
            (also minus the last teacher's batch gold loss, GKD ``--rl_kd_reward=2``).
        baseline_momentum: subtract a moving average of the reward (``b ← m·b + (1−m)·R``) from it;
            ``None`` (default, reference): no baseline.
        agent_weight: weight of the agent's term (GKD ``--rl_kd_alpha`` also scales it).
        positions: for token-level (MLM) teacher logits, the positions averaged into the state:
            ``"masked_tokens"``, ``"all_tokens"`` (GKD ``--rl_kd_only_mask_pad``) or
            ``"all_positions"`` (``--rl_kd_wo_loss_mask``). Task logits have one row per example, so
            it does not apply to them.
    """

    needs_student_loss = True  # the reward is the student's own loss

    def __init__(
        self,
        stage: Literal["average", "rl"] = "rl",
        num_teachers: int | None = None,
        num_classes: int | None = None,
        semantic_model: ModelSource | None = None,
        semantic_dim: int | None = None,
        semantic_pooling: Pooling = "auto",
        objective: Objective = "reference_prob",
        reward: Reward = "student",
        baseline_momentum: float | None = None,
        agent_weight: float = 1.0,
        positions: Positions = "masked_tokens",
    ) -> None:
        super().__init__()
        if stage not in ("average", "rl"):
            raise ValueError(f"stage must be 'average' or 'rl', got {stage!r}.")
        self.stage = stage
        self.per_sample = stage == "rl"
        self.agent: RLAgent | None = None
        self._semantic: list[nn.Module] = []  # a list keeps the frozen encoder out of the module tree
        self._previous: tuple[tuple[Tensor, Tensor, Tensor], Tensor] | None = None
        if stage == "average":
            unset = {"num_teachers": num_teachers, "num_classes": num_classes, "semantic_model": semantic_model,
                     "semantic_dim": semantic_dim, "baseline_momentum": baseline_momentum}
            defaults = {"objective": (objective, "reference_prob"), "reward": (reward, "student"), "agent_weight": (agent_weight, 1.0),
                        "positions": (positions, "masked_tokens"), "semantic_pooling": (semantic_pooling, "auto")}
            unused = [name for name, value in unset.items() if value is not None]
            unused += [name for name, (value, default) in defaults.items() if value != default]
            if unused:
                raise ValueError(f"stage='average' has no agent, so {unused} do not apply; remove them or use stage='rl'.")
            self._average = Average()
            return
        if not num_teachers or num_teachers < 1 or not num_classes or num_classes < 1:
            raise ValueError(
                "stage='rl' builds the agent before training starts, so it needs num_teachers (the length of "
                f"`teachers`) and num_classes (the task's label count), got {num_teachers} and {num_classes}."
            )
        if objective not in ("reference_prob", "reinforce_logprob"):
            raise ValueError(f"objective must be 'reference_prob' or 'reinforce_logprob', got {objective!r}.")
        if reward not in ("student", "student_and_teachers", "student_and_last_teacher"):
            raise ValueError(f"reward must be 'student', 'student_and_teachers' or 'student_and_last_teacher', got {reward!r}.")
        if baseline_momentum is not None and not 0.0 <= baseline_momentum < 1.0:
            raise ValueError(f"baseline_momentum must lie in [0, 1), got {baseline_momentum}.")
        if agent_weight <= 0:
            raise ValueError(f"agent_weight must be > 0, got {agent_weight}; use stage='average' for no agent.")
        if positions not in ("masked_tokens", "all_tokens", "all_positions"):
            raise ValueError(f"positions must be 'masked_tokens', 'all_tokens' or 'all_positions', got {positions!r}.")
        if semantic_model is None and semantic_dim is not None:
            raise ValueError("semantic_dim sizes the semantic state, which needs semantic_model; set it or remove semantic_dim.")
        if semantic_model is None and semantic_pooling != "auto":
            raise ValueError(
                "semantic_pooling pools the semantic encoder, which needs semantic_model; set it or remove semantic_pooling."
            )
        if semantic_dim is not None and semantic_dim < 1:
            raise ValueError(f"semantic_dim must be >= 1, got {semantic_dim}.")
        self.num_teachers, self.num_classes = num_teachers, num_classes
        self.objective, self.reward, self.agent_weight = objective, reward, agent_weight
        self.baseline_momentum, self.positions = baseline_momentum, positions
        self.semantic_pooling = semantic_pooling
        if semantic_model is not None:
            encoder = _load_encoder(semantic_model)
            resolve_pooling(semantic_pooling, encoder, "the semantic encoder")  # a refused mode fails now
            self._semantic.append(encoder)
            semantic_dim = semantic_dim or encoder.config.hidden_size
        self.semantic_dim = semantic_dim or 0
        self.agent = RLAgent(self.semantic_dim, num_teachers, num_classes)
        if baseline_momentum is not None:
            self.register_buffer("baseline", torch.tensor(float("nan")))

    def unlabelled_refusal(self) -> str | None:
        if self.stage == "average":
            return None  # the plain mean reads no label
        return "its agent's state holds each teacher's loss on each example's gold label and its reward is the student's task loss"

    def teacher_logit_rows(self) -> LogitRows:
        # The agent's state reads each teacher's logits at `positions` and its gold loss at the labels.
        return widest(position_rows(self.positions), "labelled") if self.stage == "rl" else "none"

    # ------------------------------------------------------------------ state
    def state(self, step: TeacherStep) -> tuple[Tensor, Tensor, Tensor]:
        """The agent's detached inputs: semantic ``(B, D)``, teacher gold losses ``(B, N)``, logits ``(B, C·N)``."""
        labels = step.batch["labels"]
        logits = [z.detach().float() for z in step.teacher_logits]
        if step.token_level(0):  # MLM: each teacher's mean logits over the positions, whole or compact rows
            mask = position_mask(step.batch, self.positions)
            keep = torch.ones(labels.shape[:2], dtype=torch.bool, device=labels.device) if mask is None else mask.bool()
            logits = [mean_per_example(step.teacher_logits_at(k, keep).detach().float(), keep) for k in range(len(logits))]
        if logits[0].shape[-1] != self.num_classes:
            raise ValueError(
                f"RLKD was built for num_classes={self.num_classes} but the teachers' logits have {logits[0].shape[-1]} "
                "outputs; set num_classes to the task's label count (the vocabulary size for MLM logits)."
            )
        with torch.no_grad():
            marks = step.batch.get(LABELLED)
            losses = torch.stack([teacher_gold_loss(z, labels, step.teacher_rows(k), marks) for k, z in enumerate(step.teacher_logits)], dim=1)
            semantic = self.semantic_state(step.batch) if self._semantic else losses.new_zeros(losses.shape[0], 0)
        return semantic, losses, torch.cat(logits, dim=1)

    def semantic_state(self, batch: dict[str, Tensor]) -> Tensor:
        """The semantic encoder's final pooled (``semantic_pooling``) vector per example, padded/truncated
        to ``semantic_dim``."""
        encoder = self._semantic[0]
        inputs = model_inputs(batch)
        ids = inputs["input_ids"]
        if next(encoder.parameters()).device != ids.device:
            encoder.to(ids.device)
        if int(ids.max()) >= encoder.config.vocab_size:
            raise ValueError(
                f"The semantic encoder has {encoder.config.vocab_size} tokens but the batch holds id {int(ids.max())}; "
                "it must share the student's tokenizer."
            )
        batch_size = ids.shape[0]
        if ids.dim() == 3:  # multiple choice: (B, K, N) → (B·K, N), then the K vectors side by side
            inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
        last = encoder(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1]
        mode = resolve_pooling(self.semantic_pooling, encoder, "the semantic encoder")
        cls = pool(last, inputs.get("attention_mask"), mode).float()
        cls = cls.reshape(batch_size, -1)
        if cls.shape[1] >= self.semantic_dim:
            return cls[:, : self.semantic_dim]
        return torch.nn.functional.pad(cls, (0, self.semantic_dim - cls.shape[1]))

    # ------------------------------------------------------------------ combination
    def combine(self, per_teacher: Sequence[Mapping[str, Tensor]], step: TeacherStep) -> LossTerms:
        if self.stage == "average":
            return self._average.combine(per_teacher, step)
        if "labels" not in step.batch:
            raise ValueError("RL-KD scores teachers by their gold loss and rewards the agent with the student's; the batch has no 'labels'.")
        if len(per_teacher) != self.num_teachers:
            raise ValueError(f"RLKD was built for num_teachers={self.num_teachers} but {len(per_teacher)} teachers ran; set num_teachers.")
        state = self.state(step)
        with torch.no_grad():
            action = torch.bernoulli(self.agent(*state))
        batch_size = action.shape[0]
        out = LossTerms()
        for k, terms in enumerate(typed(per_teacher)):
            terms.check_per_example(batch_size, "RL-KD")
            for name, term in terms.typed_items():
                # mean over (b, i) of a_{b,i}·ℓ_{i,b}; a scalar term is the same for every example.
                out.accumulate(name, (action[:, k] * term.value).sum() / (batch_size * self.num_teachers), term.role)
        out.add("agent", self.agent_weight * self.agent_objective(state, step, action), Role.STRATEGY)
        self._previous = (state, action)
        return out

    def agent_objective(self, state: tuple[Tensor, Tensor, Tensor], step: TeacherStep, action: Tensor) -> Tensor:
        """The agent's loss for the previous step's state and action, rewarded by the current step."""
        if self._previous is None:
            return self.agent(*state).sum() * 0.0  # nothing to score yet; keeps the agent in the graph
        previous_state, previous_action = self._previous
        reward = self.reward_value(step, state, action)
        if self.baseline_momentum is not None:
            if torch.isnan(self.baseline):
                self.baseline.fill_(reward.item())
            advantage = reward - self.baseline
            self.baseline.mul_(self.baseline_momentum).add_((1 - self.baseline_momentum) * reward)
        else:
            advantage = reward
        sigma = self.agent(*previous_state)
        prob = sigma * previous_action + (1 - sigma) * (1 - previous_action)
        if self.objective == "reinforce_logprob":
            return -prob.clamp_min(1e-12).log().sum() * advantage
        return -prob.sum() * advantage

    def reward_value(self, step: TeacherStep, state: tuple[Tensor, Tensor, Tensor], action: Tensor) -> Tensor:
        """The detached reward of the current step."""
        if step.student.loss is None:
            raise ValueError("RL-KD rewards the agent with the student's task loss, which needs labels in the batch.")
        reward = -step.student.loss.detach().float()
        teacher_losses = state[1]
        if self.reward == "student_and_teachers":
            reward = reward - (teacher_losses * action).sum() / action.sum().clamp_min(1)
        elif self.reward == "student_and_last_teacher":
            reward = reward - teacher_losses[:, -1].mean()
        return reward


def _load_encoder(source: ModelSource) -> nn.Module:
    """The frozen semantic encoder (a built model, a directory, ``embedded:<name>`` or a hub name)."""
    if isinstance(source, nn.Module):
        return freeze(source)
    from transformers import AutoModel

    from lightning_kd.data.sources import resolve_source

    return freeze(AutoModel.from_pretrained(resolve_source(source)))
