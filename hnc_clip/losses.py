"""Contrastive and hard-negative losses for CLIP and SigLIP: pure tensor code.

Nothing here knows about the Trainer, the CLI or datasets. Every loss takes a `LossInputs` and a `LossConfig`
and returns a dict of named components (`loss_components` adds the regulariser any loss may carry); the training
loss is their sum (as open_clip's `output_dict=True`).

Layout, with B pairs per process, W processes, r this process's rank, all embeddings L2-normalised:

    images I      [B, D]          local rows; I_all [W·B, D] gathered
    positives P   [B, D]          P_all [W·B, D]
    negatives N   [K·B, D]        N_all [W·K·B, D]  K per pair, k-major: N[k·B + i] is image i's k-th hard negative
    texts         [P_all; N_all]  [(1+K)·W·B, D]    image→text candidates for the hard-negative terms
    labels        arange(B) + r·B                   the positive of local image i sits at column r·B + i

HNC has K = 1; a hard-negative table may give K per pair (`hnc_clip.data.table`). Hard *image* negatives (NegCLIP's
nearest-neighbour images) are not a tensor here: they arrive as further pairs of the batch (image, its caption, its
negatives), so they are extra rows of image→text and extra columns of text→image, as in NegCLIP.

Each process computes the loss of its *own* rows against the *global* columns ("local loss", open_clip
`local_loss=True`), so memory is O(B · W·B), not O((W·B)²). Embeddings are gathered with a differentiable
all-gather, so gradients flow to the process that produced each embedding; averaging the per-process losses
(DDP's gradient averaging) then equals the loss of one process holding the whole global batch.

Uneven batches (a pair is dropped when its image cannot be read; a process may have none): process r holds
n_r ≤ P real rows. Each pads its rows to a block of P (`gather_features`), so every process enters the same
collectives with the same shapes; the gathered columns are W blocks of P, padding masked (-inf), and the labels are
arange(B) + r·P. Each loss is a mean over the process's own rows, so the total is weighted by
w_r = W·n_r / Σn (`process_share`): DDP's average Σ_r w_r·L_r / W is then the mean over all real rows, the loss of one
process holding them. With equal batches w_r = 1 exactly and nothing is padded: the numbers are the same to the bit.
A process without a readable pair encodes one placeholder row (`hnc_clip.forward.placeholder_batch`) weighted 0.

Pairs without a hard negative (plain captions for which no rule applied, `hnc_clip.negatives`): their K slots hold
a stand-in marked False in `Embeddings.negative_mask` [K·B]. A masked negative is no one's candidate (-inf), so
such a pair trains the contrastive term only: its own-pair terms (`pairwise`, `dpo`) are 0 and the hard-negative
terms stay means over all B pairs, as every term is (exact under DDP). None: every negative is real, and nothing
is masked (the same numbers to the bit).

Same-image false negatives: HNC has ~121 pairs per GQA image, so two pairs of one image can share a (global)
batch. Their images are identical and each one's positive caption is true of the other's image, so with
`mask_same_image` those off-diagonal image–positive logits are set to -inf (both directions). The other pair's
*hard negative* stays a candidate: it is false for that image too.

Families (`hnc_clip.families`): each loss is written for CLIP's softmax (InfoNCE) term; the ones that make sense
with SigLIP's pairwise sigmoid have a `sigmoid` variant (`LossSpec.variants`), picked from the model's family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .loss_config import LossConfig

# ---------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class TokenEmbeddings:
    """Per-token text and per-patch image embeddings in the joint space, *not* normalised, of this process's rows
    only (for FSC-CLIP's local term, which compares a pair's own image and captions: nothing to gather)."""

    image: torch.Tensor  # [B, Q, D]  patch tokens through the vision projection (the class token excluded)
    positive: torch.Tensor  # [B, L, D]  caption tokens through the text projection
    negative: torch.Tensor  # [K·B, L, D] k-major, as `Embeddings.negative` (tokens are encoded with the negatives)
    positive_mask: torch.Tensor  # [B, L] bool: the caption's own tokens (not the start token, not padding)
    negative_mask: torch.Tensor  # [K·B, L] bool


@dataclass
class Embeddings:
    """L2-normalised embeddings of one batch of (image, positive, hard negative) triples."""

    image: torch.Tensor  # [B, D]
    positive: torch.Tensor  # [B, D]
    negative: torch.Tensor | None  # [K·B, D] k-major; None when the loss uses no negatives (not encoded, e.g. `clip`)
    image_ids: torch.Tensor | None = None  # [B] int64: equal ids = the same image
    # Gathered embeddings only (`gather_features`): W blocks of `block` rows, the first rows[r] of block r real, the
    # rest padding. None: every row is real.
    rows: torch.Tensor | None = None  # [W] int64
    block: int | None = None
    # [K·B] bool (gathered: [W·K·P]), k-major as `negative`: False where a pair has no k-th hard negative (its slot
    # holds a stand-in). None: every negative is real.
    negative_mask: torch.Tensor | None = None
    tokens: TokenEmbeddings | None = None  # local rows only, when a loss asks for them (`LossSpec.needs_tokens`)

    def __len__(self) -> int:
        return self.image.shape[0]

    def negatives_per_pair(self) -> int:
        """K: the negatives each pair brings (1 for HNC)."""
        return self.negative.shape[0] // self.image.shape[0]

    def own_negatives(self) -> torch.Tensor:
        """[K, B, D]: pair i's k-th hard negative at [k, i]."""
        return self.negative.view(self.negatives_per_pair(), len(self), -1)

    def own_negative_mask(self) -> torch.Tensor | None:
        """[K, B] bool: whether pair i has a k-th hard negative (None: all have)."""
        return None if self.negative_mask is None else self.negative_mask.view(self.negatives_per_pair(), len(self))


@dataclass
class LossInputs:
    local: Embeddings  # this process's rows
    everywhere: Embeddings  # gathered from all processes (the same object when W == 1)
    logit_scale: torch.Tensor  # scalar: exp(logit_scale), already clamped
    rank: int = 0
    # Frozen starting model, for `kl_teacher` and `dpo`; no gradient flows into it.
    reference: LossInputs | None = None
    # Σ‖θ−θ₀‖² over trainable parameters, for `--l2_reg_weight` (any loss).
    param_sq_dist: torch.Tensor | None = None
    # Several processes: the real rows of each ([W] int64) and this process's weight w_r (`process_share`).
    rows: torch.Tensor | None = None
    share: torch.Tensor | None = None
    # SigLIP's learned bias b of the sigmoid logits s·⟨i, t⟩ + b (0-dim); None for CLIP.
    logit_bias: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# Gathering


def gather_sizes(b: int, real: int, device, world_size: int) -> torch.Tensor:
    """[W, 2]: every process's (rows, real rows). Built with fills, not from a Python list: copying host values to
    the device would wait for the GPU queue."""
    sizes = torch.full((2,), b, dtype=torch.long, device=device)  # [2]
    if real != b:
        sizes[1].fill_(real)
    parts = [torch.empty_like(sizes) for _ in range(world_size)]
    dist.all_gather(parts, sizes)
    return torch.stack(parts)  # [W, 2]


def gather_features(
    local: Embeddings, rank: int, world_size: int, block: int | None = None, real_rows: int | None = None
) -> Embeddings:
    """All-gather embeddings *with gradient* (`torch.distributed.nn.all_gather`), as open_clip `gather_with_grad`.

    The plain `torch.distributed.all_gather` returns tensors detached from the graph, which would silently drop
    the gradient of every other process's embeddings. The local tensors are put back in place so the local rows
    of the result are the very tensors of this process.

    Processes may hold different numbers of rows. Each pads its B rows to `block` rows (at least every process's
    B: the trainer passes the per-device batch size; None: the largest B, gathered and read on the host, one sync)
    and the real rows of each (`real_rows`, default B; 0 for a placeholder) travel along (`Embeddings.rows`).
    """
    if world_size == 1:
        return local
    import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.functional)

    b = len(local)
    sizes = gather_sizes(b, b if real_rows is None else real_rows, local.image.device, world_size)  # [W, 2]
    if block is None:
        block = int(sizes[:, 0].max())
    if b > block:
        raise ValueError(f"this process holds {b} rows, more than the {block} every process pads its rows to")

    def pad(t: torch.Tensor) -> torch.Tensor:  # [B, ...] → [block, ...]
        return t if b == block else torch.cat([t, t.new_zeros(block - b, *t.shape[1:])])

    def gather(t: torch.Tensor | None, k: int = 1) -> torch.Tensor | None:
        if t is None:
            return None
        # K blocks of B rows (the k-major negatives) each padded to `block`: [K·block, ...]
        padded = torch.cat([pad(part) for part in t.chunk(k)]) if k > 1 else pad(t)
        parts = list(torch.distributed.nn.functional.all_gather(padded.contiguous()))
        parts[rank] = padded
        return torch.cat(parts, dim=0)  # [W·K·block, ...]: process-major, then k, then row

    def gather_plain(t: torch.Tensor) -> torch.Tensor:  # no gradient (ids, masks): the plain collective is enough
        parts = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    ids = gather_plain(pad(local.image_ids)) if local.image_ids is not None else None  # [W·block]
    k = local.negatives_per_pair() if local.negative is not None else 1
    mask = None
    if local.negative_mask is not None and local.negative is not None:
        # [W·K·block] in the negatives' layout; padding reads True (it is masked as padding, `get_logits`)
        mask = gather_plain(torch.cat([pad(part) | (torch.arange(block, device=part.device) >= b)
                                       for part in local.negative_mask.chunk(k)]))  # fmt: skip
    return Embeddings(
        gather(local.image), gather(local.positive), gather(local.negative, k), ids, rows=sizes[:, 1], block=block,
        negative_mask=mask,
    )


def process_share(rows: torch.Tensor, rank: int) -> torch.Tensor:
    """w_r = W·n_r / Σn (0-dim): this process's weight, so that DDP's average of the per-process mean losses is the
    mean over all real rows (see the module docstring). Exactly 1 for equal batches; 0 for a process without a real
    row, and for every process when there is none anywhere (that step is skipped, `StepGuard`)."""
    world = rows.shape[0]
    return rows[rank].float() * world / rows.sum().clamp(min=1).float()


def total_loss(components: dict[str, torch.Tensor], inp: LossInputs) -> torch.Tensor:
    """The training loss: the sum of the components, weighted by this process's share when there are several."""
    loss = torch.stack(list(components.values())).sum()
    return loss if inp.share is None else loss * inp.share


# ---------------------------------------------------------------------------------------------------------------
# Logits


@dataclass
class ContrastiveLogits:
    image_to_positive: torch.Tensor  # [B, W·B]  s·I Pᵀ_all
    image_to_negative: torch.Tensor | None  # [B, W·B]  s·I Nᵀ_all
    positive_to_image: torch.Tensor  # [B, W·B]  s·P I_allᵀ
    labels: torch.Tensor  # [B]  arange(B) + r·B
    extra: dict = field(default_factory=dict)


def get_logits(inp: LossInputs, mask_same_image: bool = True) -> ContrastiveLogits:
    loc, glob, s = inp.local, inp.everywhere, inp.logit_scale
    b = len(loc)
    block = glob.block if glob.block is not None else b  # P: rows per process in the gathered columns
    labels = torch.arange(b, device=loc.image.device) + inp.rank * block  # [B]
    i2p = s * loc.image @ glob.positive.T  # [B, W·P]
    i2n = s * loc.image @ glob.negative.T if glob.negative is not None else None  # [B, W·K·P]
    p2i = s * loc.positive @ glob.image.T  # [B, W·P]
    if glob.rows is not None:
        # Padding, and a placeholder row, are no one's candidate. A row's own column stays: the placeholder's
        # loss must stay finite, as it is weighted 0 (`process_share`), not masked.
        offsets = torch.arange(block, device=labels.device)  # [P]
        real = offsets[None, :] < glob.rows[:, None]  # [W, P]
        columns = torch.arange(real.numel(), device=labels.device)  # [W·P]
        padding = ~real.reshape(-1)[None, :] & (columns[None, :] != labels[:, None])  # [B, W·P]
        i2p, p2i = i2p.masked_fill(padding, float("-inf")), p2i.masked_fill(padding, float("-inf"))
        if i2n is not None:
            k = i2n.shape[1] // real.numel()
            real_negative = real[:, None, :].expand(-1, k, -1).reshape(-1)  # [W·K·P], the gathered layout
            neg_columns = torch.arange(real_negative.shape[0], device=labels.device)  # [W·K·P]
            rows = torch.arange(b, device=labels.device)  # [B]
            # A row's own negatives stay too (column r·K·P + k·P + i), as its own positive does.
            own = (neg_columns[None, :] // (k * block) == inp.rank) & (neg_columns[None, :] % block == rows[:, None])
            i2n = i2n.masked_fill(~real_negative[None, :] & ~own, float("-inf"))  # [B, W·K·P]
    if i2n is not None and glob.negative_mask is not None:
        i2n = i2n.masked_fill(~glob.negative_mask[None, :], float("-inf"))  # [B, W·K·P] a stand-in is no candidate
    same = same_image_mask(inp, labels) if mask_same_image else None  # [B, W·P]
    if same is not None:
        i2p = i2p.masked_fill(same, float("-inf"))
        p2i = p2i.masked_fill(same, float("-inf"))
    return ContrastiveLogits(i2p, i2n, p2i, labels)


def same_image_mask(inp: LossInputs, labels: torch.Tensor) -> torch.Tensor | None:
    """[B, W·P] True where local pair i and global pair j show the same image and j is not i (None: no ids)."""
    loc, glob = inp.local, inp.everywhere
    if loc.image_ids is None or glob.image_ids is None:
        return None
    columns = torch.arange(glob.image_ids.shape[0], device=labels.device)  # [W·B]
    # Same image, except the true pair. (Not `same[rows, labels] = False`: assigning a Python scalar copies it
    # to the device, a blocking copy that stalls the CPU every step.)
    return (loc.image_ids[:, None] == glob.image_ids[None, :]) & (columns[None, :] != labels[:, None])  # [B, W·B]


def _clip_term(lg: ContrastiveLogits) -> torch.Tensor:
    return 0.5 * (F.cross_entropy(lg.image_to_positive, lg.labels) + F.cross_entropy(lg.positive_to_image, lg.labels))


def _own_pair_logits(inp: LossInputs, masked: bool = True) -> torch.Tensor:
    """[B, 1+K] logits of each image against its own positive (col 0) and its own K hard negatives (cols 1..K);
    a missing negative's column is -inf unless `masked` is False."""
    loc = inp.local
    pos = (loc.image * loc.positive).sum(-1)  # [B]
    neg = (loc.image[None] * loc.own_negatives()).sum(-1)  # [K, B]
    logits = inp.logit_scale * torch.cat([pos[:, None], neg.T], dim=1)  # [B, 1+K]
    return _without_missing(logits, loc.own_negative_mask()) if masked else logits


def _without_missing(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, 1+K] own-text logits (the positive at column 0) with a missing negative's column at -inf (`mask` [K, B]:
    which are real; None: all)."""
    if mask is None:
        return logits
    return logits.masked_fill(torch.cat([torch.zeros_like(mask[:1]), ~mask]).T, float("-inf"))  # [B, 1+K]


# ---------------------------------------------------------------------------------------------------------------
# Losses


def clip_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Standard symmetric InfoNCE over positives (the baseline; CLIP, Radford et al. 2021, eq. in Fig. 3).

    L = ½ [CE(s·I Pᵀ, y) + CE(s·P Iᵀ, y)],  y_i = r·B + i.  Hard negatives are not used.
    """
    return {"contrastive_loss": _clip_term(get_logits(inp, cfg.mask_same_image))}


def hnc_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """CLIP loss + λ · hard-negative image→text InfoNCE over [all positives; all hard negatives].

    L = L_clip + λ · CE(s·I [P_all; N_all]ᵀ, y)   (logits [B, 2·W·B]; text→image stays over positives only,
    since a hard negative describes no image). With λ = 0 the hard-negative term has zero gradient.
    """
    lg = get_logits(inp, cfg.mask_same_image)
    i2t = torch.cat([lg.image_to_positive, lg.image_to_negative], dim=1)  # [B, 2·W·B]
    return {
        "contrastive_loss": _clip_term(lg),
        "hard_negative_loss": cfg.hard_negative_weight * F.cross_entropy(i2t, lg.labels),
    }


def pairwise_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """CLIP loss + λ · CE of each image over its own [positive, hard negative(s)].

    L = L_clip + λ · mean_i −log( e^{s⟨i,p_i⟩} / (e^{s⟨i,p_i⟩} + Σ_k e^{s⟨i,n_ik⟩}) )   (two-way for K = 1).
    """
    pair = _own_pair_logits(inp)  # [B, 1+K]
    target = torch.zeros(len(pair), dtype=torch.long, device=pair.device)  # [B] the positive is column 0
    return {
        "contrastive_loss": _clip_term(get_logits(inp, cfg.mask_same_image)),
        "hard_negative_loss": cfg.hard_negative_weight * F.cross_entropy(pair, target),
    }


def thesis_l2_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """The seed thesis's formulation, kept for comparison: the own hard negative's *logit* is scaled by λ.

    i2t = s·I [P_all; N_all]ᵀ with i2t[i, W·B + r·B + i] ← λ · i2t[i, W·B + r·B + i];
    L = ½ [CE(i2t, y) + CE(s·P I_allᵀ, y)]   (+ λ_reg · Σ‖θ−θ₀‖² with `--l2_reg_weight`, as with every loss).
    Scaling a logit (rather than a loss term) makes λ's effect depend on the sign of the similarity, one reason
    the `hnc` loss replaces it. The thesis multiplied the cosines by CLIP's `logit_scale` *parameter* (the log of the
    temperature, ln 100 ≈ 4.6 for OpenAI CLIP); here s = exp(logit_scale), clamped at `--max_logit_scale`, as in
    CLIP and open_clip, so its losses are not numerically those of the thesis.
    """
    lg = get_logits(inp, cfg.mask_same_image)
    weight = torch.ones_like(lg.image_to_negative)  # [B, W·K·P]
    b, k = len(lg.labels), inp.local.negatives_per_pair()
    block = inp.everywhere.block or b  # P: rows per process in the gathered columns (B when nothing is padded)
    own = torch.arange(k * b, device=weight.device)  # local negative m = k·B + i belongs to pair i = m mod B
    # its column in N_all: r·K·P + k·P + i (r·K·B + m without padding)
    weight[own % b, inp.rank * k * block + (own // b) * block + own % b] = cfg.hard_negative_weight
    scaled = lg.image_to_negative * weight  # [B, W·K·P]
    # a masked candidate stays -inf (at λ = 0 the product would be NaN)
    scaled = torch.where(torch.isneginf(lg.image_to_negative), lg.image_to_negative, scaled)
    i2t = torch.cat([lg.image_to_positive, scaled], dim=1)  # [B, (1+K)·W·B]
    return {
        "contrastive_loss": 0.5 * (F.cross_entropy(i2t, lg.labels) + F.cross_entropy(lg.positive_to_image, lg.labels))
    }


def kl_teacher_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """`hnc` loss + κ · T² · KL(teacher ‖ student) on the image→text ([P;N]) and text→image distributions.

    The teacher is the frozen starting model: the KL keeps the tuned model's ranking of *all* candidates close
    to where it started, which protects object recognition while the hard-negative term moves relations.
    """
    if inp.reference is None:
        raise ValueError("kl_teacher needs LossInputs.reference (the frozen starting model's embeddings)")
    out = hnc_loss(inp, cfg)
    t = cfg.kl_temperature

    def dists(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        lg = get_logits(x, cfg.mask_same_image)
        i2t = torch.cat([lg.image_to_positive, lg.image_to_negative], dim=1)  # [B, 2·W·B]
        return i2t / t, lg.positive_to_image / t

    s_i2t, s_t2i = dists(inp)
    with torch.no_grad():
        r_i2t, r_t2i = dists(inp.reference)

    def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        # -inf (masked) columns are -inf in both: zero teacher mass, so they contribute nothing.
        logp, logq = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
        q = logq.exp()
        return (q * (logq - logp)).nan_to_num(0.0).sum(-1).mean()

    out["kl_loss"] = cfg.kl_weight * t * t * 0.5 * (kl(s_i2t, r_i2t) + kl(s_t2i, r_t2i))
    return out


def dpo_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """DPO on (image, positive ≻ hard negative) against the frozen starting model (Rafailov et al. 2023, eq. 7).

    s± = logit_scale·⟨i, t±⟩ of the policy, s±_ref of the reference;
    L = mean_i −log σ(β [(s⁺ − s⁺_ref) − (s⁻ − s⁻_ref)])  +  w_c · L_clip   (w_c = `dpo_contrastive_weight`);
    with K negatives per pair, the mean runs over the B·K (positive, negative) preferences.
    """
    if inp.reference is None:
        raise ValueError("dpo needs LossInputs.reference (the frozen starting model's embeddings)")
    pol = _own_pair_logits(inp, masked=False)  # [B, 1+K]
    with torch.no_grad():
        ref = _own_pair_logits(inp.reference, masked=False)  # [B, 1+K]
    margin = (pol[:, :1] - ref[:, :1]) - (pol[:, 1:] - ref[:, 1:])  # [B, K]: each (positive, negative k) pair
    terms = -F.logsigmoid(cfg.dpo_beta * margin)  # [B, K]
    mask = inp.local.own_negative_mask()  # [K, B]
    # a missing negative is no preference: it adds 0 to the mean over the B·K slots
    out = {"dpo_loss": terms.mean() if mask is None else terms.masked_fill(~mask.T, 0.0).sum() / terms.numel()}
    if cfg.dpo_contrastive_weight > 0:
        out["contrastive_loss"] = cfg.dpo_contrastive_weight * _clip_term(get_logits(inp, cfg.mask_same_image))
    return out


def negclip_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """NegCLIP (Yuksekgonul et al., ICLR 2023), exactly as vinid/neg_clip computes it (`src/training/train.py`,
    `src/open_clip/loss.py: ClipLoss`): the hard negatives sit inside the image→text softmax, unweighted, and
    text→image runs over the positives only.

    L = ½ [CE(s·I [P_all; N_all]ᵀ, y) + CE(s·P I_allᵀ, y)]     (logits [B, (1+K)·W·B] and [B, W·B])

    NegCLIP's batch is images [I; I'] and texts [T; T'; H; H'], I' the hard (nearest-neighbour) images with their
    captions T' and hard captions H': here those are further pairs of the batch (`hnc_clip.data.table`), which
    gives the same rows and columns. Under W processes this is the loss of one process holding the global batch
    (NegCLIP's own multi-GPU path gathers texts rank by rank, so its labels there do not follow this layout). No λ:
    `--hard_negative_weight` must stay 1. NegCLIP does not mask same-image pairs: `--mask_same_image false` for
    its numbers on batches where an image repeats. It clamps logit_scale to [0, ln 100]; here to ln(max) only.
    """
    lg = get_logits(inp, cfg.mask_same_image)
    i2t = torch.cat([lg.image_to_positive, lg.image_to_negative], dim=1)  # [B, (1+K)·W·B]
    return {
        "contrastive_loss": 0.5 * (F.cross_entropy(i2t, lg.labels) + F.cross_entropy(lg.positive_to_image, lg.labels))
    }


def _hard_negative_focal(inp: LossInputs, gamma: float, smoothing: float) -> torch.Tensor:
    """FSC-CLIP's hard-negative focal term with smoothed targets (0-dim): mean over the B pairs of
    Σ_j y_ij · −(1 − p_ij)^γ · log p_ij, p_i = softmax over [own positive; own K negatives]."""
    return _focal_over_own_texts(_own_pair_logits(inp), inp.local.own_negative_mask(), gamma, smoothing)


def _focal_over_own_texts(
    logits: torch.Tensor, mask: torch.Tensor | None, gamma: float, smoothing: float
) -> torch.Tensor:
    """`_focal_loss_with_nsr` of the authors on [B, 1+K] logits over a pair's positive (column 0) and its K
    negatives, a missing negative's column -inf (`mask` [K, B]: which are real; None: all)."""
    b, k = logits.shape[0], logits.shape[1] - 1
    valid = torch.ones(b, k, dtype=torch.bool, device=logits.device) if mask is None else mask.T  # [B, K]
    n = valid.sum(1, keepdim=True).to(logits.dtype)  # [B, 1] real negatives of each pair
    target = torch.cat([1.0 - smoothing + smoothing / (n + 1), valid * (smoothing / (n + 1))], 1)  # [B, 1+K]
    logp = F.log_softmax(logits, dim=1)  # [B, 1+K]
    columns = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)  # [B, 1+K] the candidates
    # A missing column's -inf would give 0·inf = NaN (value and gradient); it has no target mass anyway.
    safe = logp.masked_fill(~columns, 0.0)  # [B, 1+K]
    # (1 − p) clamped above 0: at p = 1 exactly (a pair without negatives, or fp32 rounding) the gradient of x^γ
    # for γ < 1 is infinite, times a zero upstream gradient.
    modulation = (1.0 - logp.exp()).clamp(min=torch.finfo(logp.dtype).tiny) ** gamma  # [B, 1+K]
    per_pair = (target * -(modulation * safe)).sum(1)  # [B]
    # a pair without any negative adds 0 to the mean over all B (its row is one certain class)
    return per_pair.masked_fill(n[:, 0] == 0, 0.0).mean()


def _patch_weights_minmax(sim: torch.Tensor, sparsify: bool) -> torch.Tensor:
    """[N, L, Q] → per token, the patches' weights: min–max scaled over the patches, summing to 1."""
    low, high = sim.min(-1, keepdim=True).values, sim.max(-1, keepdim=True).values  # [N, L, 1]
    # patches a token cannot tell apart weigh alike (the authors' 0/0 would make the step NaN; sim is detached)
    span = high - low
    w = torch.where(span > 0, (sim - low) / span.clamp(min=torch.finfo(sim.dtype).tiny), torch.ones_like(sim))
    if sparsify:  # the authors' `sim_sparsify`: drop patches below the uniform weight
        w = w.masked_fill(w < 1.0 / sim.shape[-1], 0.0)
    return w / w.sum(-1, keepdim=True)


# How a token's similarities to the patches become the weights of its patch average (FSC-CLIP's `sim_normalizer`).
PATCH_WEIGHTS: dict[str, Callable[[torch.Tensor, bool], torch.Tensor]] = {
    "minmax": _patch_weights_minmax,
    "softmax": lambda sim, sparsify: sim.softmax(-1),
}


def local_alignment_scores(
    patches: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor, logit_scale: torch.Tensor,
    normalizer: str = "minmax", sparsify: bool = False,
) -> torch.Tensor:
    """FSC-CLIP's token–patch score of each (image, caption) row (`Local_HNLoss.get_per_token_visual_patches` and
    `get_aggregated_local_score`): every token's own average of the image's patches, weighted by the token's
    (detached) similarity to each patch, then s·cos(average, token), log-sum-exp over the caption's tokens.

    patches [N, Q, D], tokens [N, L, D] (not normalised), token_mask [N, L] bool → [N].
    """
    sim = torch.einsum("nld,nqd->nlq", tokens, patches).detach()  # [N, L, Q]: weights carry no gradient (theirs)
    weights = PATCH_WEIGHTS[normalizer](sim, sparsify)  # [N, L, Q]
    grouped = F.normalize(torch.einsum("nlq,nqd->nld", weights, patches), dim=-1)  # [N, L, D]
    local = logit_scale * (grouped * F.normalize(tokens, dim=-1)).sum(-1)  # [N, L]
    return torch.logsumexp(local.masked_fill(~token_mask, float("-inf")), dim=1)  # [N]


def _local_hard_negative_focal(inp: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """FSC-CLIP's local hard-negative term (LHN, 0-dim): the focal loss with smoothed targets of
    `_hard_negative_focal` over each pair's local scores [own positive; own K negatives] instead of its cosines."""
    tok, loc = inp.local.tokens, inp.local
    if tok is None:
        raise ValueError("fsc_clip's local term needs the token embeddings (`embed(..., with_tokens=True)`)")
    k = loc.negatives_per_pair()
    patches = tok.image.repeat(1 + k, 1, 1)  # [(1+K)·B, Q, D]: row k·B + i is image i, as the captions' order
    texts = torch.cat([tok.positive, tok.negative])  # [(1+K)·B, L, D]
    masks = torch.cat([tok.positive_mask, tok.negative_mask])  # [(1+K)·B, L]
    scores = local_alignment_scores(patches, texts, masks, inp.logit_scale, cfg.fsc_local_normalizer,
                                    cfg.fsc_local_sparsify).view(1 + k, len(loc))  # [1+K, B]  # fmt: skip
    mask = loc.own_negative_mask()  # [K, B]
    logits = _without_missing(scores.T, mask)  # [B, 1+K] the positive at column 0
    return _focal_over_own_texts(logits, mask, cfg.fsc_focal_gamma, cfg.fsc_label_smoothing)


def fsc_clip_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """FSC-CLIP's loss (Oh et al., EMNLP 2024, "Preserving Multi-Modal Capabilities of Pre-trained VLMs for
    Improving Vision-Linguistic Compositionality"), as ytaek-oh/fsc-clip computes it
    (`src/training/losses/loss.py`: `Global_HNLoss` with `neg_loss_name="focal_loss"`, `_focal_loss_with_nsr`):
    CLIP over the positives, plus λ · the hard-negative focal loss (HNF) with smoothed hard-negative targets.

    z_i = s·[⟨i, p_i⟩, ⟨i, n_i1⟩, …, ⟨i, n_iK⟩]   (own positive, own K negatives; [B, 1+K])
    p_i = softmax(z_i);  y_i0 = 1 − ε + ε/(1+K_i),  y_ik = ε/(1+K_i)   (K_i: pair i's real negatives)
    L = ½ [CE(s·I P_allᵀ, y) + CE(s·P I_allᵀ, y)] + λ · mean_i Σ_j y_ij · −(1 − p_ij)^γ log p_ij

    γ = `--fsc_focal_gamma` (the authors' runs: 2), ε = `--fsc_label_smoothing` (0.02), λ = `--hard_negative_weight`
    (their `--neg-loss-weight`: 0.5). γ = 0 and ε = 0: `pairwise`. Under W processes the HNF term is the pair's own
    (nothing to gather) and the CLIP term is over the global batch, as theirs. Where the authors differ: a missing
    negative is a zero vector in their softmax (logit 0) and they average over the pairs that have one; here it is
    no candidate (-inf) and a pair without any adds 0 to the mean over all B, as in every loss here (exact under
    DDP).

    With `--fsc_local_weight` μ > 0, their local term (LHN, `Local_HNLoss`) too: + μ · the same focal loss over
    [l(i, p_i), l(i, n_i1), …] with l the token–patch score (`local_alignment_scores`; the authors' runs: μ = 0.2,
    min–max weights). Each pair's own image and captions only, so under W processes nothing is gathered for it.
    Where theirs divides 0 by 0 (a token equally similar to every patch), the patches weigh alike here.
    """
    out = {
        "contrastive_loss": _clip_term(get_logits(inp, cfg.mask_same_image)),
        "hard_negative_loss": cfg.hard_negative_weight
        * _hard_negative_focal(inp, cfg.fsc_focal_gamma, cfg.fsc_label_smoothing),
    }
    if cfg.fsc_local_weight > 0:
        out["local_hard_negative_loss"] = cfg.fsc_local_weight * _local_hard_negative_focal(inp, cfg)
    return out


def ce_clip_thresholds(inp: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """CE-CLIP's adaptive thresholds from this (global) batch, detached: ([K] τ_k, [K] bool whether slot k had a
    real negative). τ_k = mean_j s⟨i_j, p_j⟩ − mean over the real k-th negatives of s⟨i_j, n_jk⟩, over the real rows
    of every process (the gathered embeddings), so that every process holds the same τ."""
    glob, s = inp.everywhere, inp.logit_scale.detach()
    k = glob.negatives_per_pair()
    block = glob.block if glob.block is not None else len(glob)  # P
    w = len(glob) // block
    image = glob.image.detach().view(w, block, -1)  # [W, P, D]
    pos = s * (image * glob.positive.detach().view(w, block, -1)).sum(-1)  # [W, P]
    neg = s * (image[:, None] * glob.negative.detach().view(w, k, block, -1)).sum(-1)  # [W, K, P]
    offsets = torch.arange(block, device=pos.device)  # [P]
    real = offsets[None, :] < glob.rows[:, None] if glob.rows is not None else torch.ones_like(pos, dtype=torch.bool)
    valid = real[:, None, :].expand(-1, k, -1)  # [W, K, P]
    if glob.negative_mask is not None:
        valid = valid & glob.negative_mask.view(w, k, block)
    gt_mean = (pos * real).sum() / real.sum().clamp(min=1)  # 0-dim
    count = valid.sum((0, 2))  # [K]
    neg_mean = (neg * valid).sum((0, 2)) / count.clamp(min=1)  # [K]
    return gt_mean - neg_mean, count > 0


def ce_clip_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """CE-CLIP (Zhang, Awal & Agrawal, CVPR 2024, "Contrasting Intra-Modal and Ranking Cross-Modal Hard Negatives to
    Enhance Visio-Linguistic Compositional Understanding"), as lezhang7/Enhance-FineGrained computes it
    (`src/open_clip/loss.py` at 2d07821: `Clip_DALoss` with `hardnegative`, `get_imc_loss`, `get_cmr_loss`,
    `threshold_type="mean"`, the thresholds clamped to [0, `--upper-bound`] in `src/training/train.py`):

    L_itc = ½ [CE(s·I [P_all; N_all]ᵀ, y) + CE(s·P I_allᵀ, y)]                  (NegCLIP's contrast)
    L_imc = mean_i −log softmax([s⟨i, p_i⟩, s⟨p_i, n⟩ for n ∈ N_all])_0          (intra-modal: [B, 1+K·W·B])
    L_cmr = mean_{i,k} relu(τ_k + s⟨i, n_ik⟩ − s⟨i, p_i⟩)                        (cross-modal rank: [B, K])
    L = L_itc + w_imc · L_imc + w_cmr · L_cmr

    τ_k is adaptive: after each training step τ_k ← clamp(mean_j s⟨i_j, p_j⟩ − mean_j s⟨i_j, n_jk⟩, 0, τ_max) over
    the global batch (`ce_clip_thresholds`), used from the next step on (0 at the first; a slot without a real
    negative keeps its τ), kept in `cfg.state` (lost on resume: it restarts from 0 and is back after one step).
    Negative slot k plays the role of the authors' negative type k (they have 4). w_imc = `--ce_clip_imc_weight`,
    w_cmr = `--ce_clip_cmr_weight` (0.2 each), τ_max = `--ce_clip_threshold_max` (10). No λ. Where this differs from
    their code: a missing negative is no candidate of any term here (theirs stay in the contrast and intra-modal
    softmaxes); same-image pairs are masked with `--mask_same_image` (they mask none). Other versions of their
    `get_imc_loss` (3cd1cf2: target column 1; 47cef4e: no image–text column, target column 0) point the target at
    a hard negative's logit, read here as slips: 2d07821 is the one whose target is the positive pair.
    """
    lg = get_logits(inp, cfg.mask_same_image)
    s = inp.logit_scale
    i2t = torch.cat([lg.image_to_positive, lg.image_to_negative], dim=1)  # [B, (1+K)·W·B]
    itc = 0.5 * (F.cross_entropy(i2t, lg.labels) + F.cross_entropy(lg.positive_to_image, lg.labels))
    pair = _own_pair_logits(inp, masked=False)  # [B, 1+K] s⟨i, p_i⟩, s⟨i, n_ik⟩
    # text–text logits; the image→negative logits' -inf marks exactly the columns that are no candidate (padding,
    # a missing negative), and a real logit is never -inf
    p2n = s * inp.local.positive @ inp.everywhere.negative.T  # [B, W·K·P]
    p2n = p2n.masked_fill(torch.isneginf(lg.image_to_negative), float("-inf"))
    imc_logits = torch.cat([pair[:, :1], p2n], dim=1)  # [B, 1+W·K·P] the positive at column 0
    imc = F.cross_entropy(imc_logits, torch.zeros_like(lg.labels))
    k = pair.shape[1] - 1
    state = cfg.state
    tau = state.get("ce_clip_thresholds") if state is not None else None
    if tau is None or tau.shape != (k,):
        tau = torch.zeros(k, dtype=pair.dtype, device=pair.device)  # [K] the authors' start
    rank = F.relu(tau[None, :] + pair[:, 1:] - pair[:, :1])  # [B, K]
    mask = inp.local.own_negative_mask()  # [K, B]
    cmr = (rank if mask is None else rank.masked_fill(~mask.T, 0.0)).mean()  # over all B·K slots, as theirs
    if state is not None:
        new, seen = ce_clip_thresholds(inp)
        state["ce_clip_thresholds"] = torch.where(seen, new.clamp(0.0, cfg.ce_clip_threshold_max), tau)  # [K]
    return {
        "contrastive_loss": itc,
        "intra_modal_loss": cfg.ce_clip_imc_weight * imc,
        "rank_loss": cfg.ce_clip_cmr_weight * cmr,
    }


# ---------------------------------------------------------------------------------------------------------------
# SigLIP's pairwise sigmoid (Zhai et al., ICCV 2023, eq. 1; big_vision `trainers/proj/image_text/siglip.py`):
# every (image, text) pair is one binary problem, z = s·⟨i, t⟩ + b, label +1 for the image's own caption and −1
# for every other, L = −(1/|B|) Σ_i Σ_j log σ(y_ij z_ij). Each process scores its own images against all gathered
# texts, so every pair of the global batch appears once, and the mean over processes is the one-process loss.


def sigmoid_terms(inp: LossInputs, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(contrastive, hard_negative): −(1/B) Σ_i of Σ over the positives P_all (labels ±1, same-image pairs left
    out with `mask_same_image`) and of Σ over the hard negatives N_all (all labels −1; None without negatives).
    Their sum is SigLIP's loss over the texts [P_all; N_all], hard negatives being extra negative pairs."""
    if inp.logit_bias is None:
        raise ValueError("sigmoid losses need LossInputs.logit_bias (a SigLIP model's logit_bias)")
    lg = get_logits(inp, mask_same_image=False)  # the softmax losses' logits and labels, without the bias
    z = lg.image_to_positive + inp.logit_bias  # [B, W·B]  s·I P_allᵀ + b
    columns = torch.arange(z.shape[1], device=z.device)  # [W·B]
    sign = torch.where(columns[None, :] == lg.labels[:, None], 1.0, -1.0).to(z.dtype)  # [B, W·B]
    loglik = F.logsigmoid(sign * z)  # [B, W·B]
    same = same_image_mask(inp, lg.labels) if cfg.mask_same_image else None
    if same is not None:
        loglik = loglik.masked_fill(same, 0.0)  # a true pair of another row: neither positive nor negative
    contrastive = -loglik.sum(1).mean()
    hard = None
    if lg.image_to_negative is not None:
        z_neg = lg.image_to_negative + inp.logit_bias  # [B, W·K·B]
        hard = -F.logsigmoid(-z_neg).sum(1).mean()
    return contrastive, hard


def sigmoid_clip_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """SigLIP's loss over the positives (the baseline for a SigLIP model, `--loss_type clip`)."""
    return {"contrastive_loss": sigmoid_terms(inp, cfg)[0]}


def sigmoid_hnc_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """SigLIP's loss with the hard negatives as extra negative pairs, those weighted by λ:

    L = −(1/B) Σ_i [ Σ_{j ∈ P_all} log σ(y_ij z_ij) + λ Σ_{n ∈ N_all} log σ(−z_in) ]   (λ = 1: SigLIP over [P; N]).
    """
    contrastive, hard = sigmoid_terms(inp, cfg)
    return {"contrastive_loss": contrastive, "hard_negative_loss": cfg.hard_negative_weight * hard}


def sigmoid_pairwise_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """SigLIP's loss + λ · the `pairwise` term (CE over own [positive, negatives]; the bias cancels in it)."""
    pair = _own_pair_logits(inp)  # [B, 1+K]
    target = torch.zeros(len(pair), dtype=torch.long, device=pair.device)  # [B]
    return {
        "contrastive_loss": sigmoid_terms(inp, cfg)[0],
        "hard_negative_loss": cfg.hard_negative_weight * F.cross_entropy(pair, target),
    }


def sigmoid_dpo_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """`dpo` with SigLIP's loss as the contrastive term (the bias cancels in DPO's margin)."""
    out = dpo_loss(inp, replace(cfg, dpo_contrastive_weight=0.0))
    if cfg.dpo_contrastive_weight > 0:
        out["contrastive_loss"] = cfg.dpo_contrastive_weight * sigmoid_terms(inp, cfg)[0]
    return out


def sigmoid_fsc_clip_loss(inp: LossInputs, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """SigLIP's loss + λ · FSC-CLIP's focal term (a softmax over the pair's own texts: the bias cancels in it)."""
    return {
        "contrastive_loss": sigmoid_terms(inp, cfg)[0],
        "hard_negative_loss": cfg.hard_negative_weight
        * _hard_negative_focal(inp, cfg.fsc_focal_gamma, cfg.fsc_label_smoothing),
    }


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[[LossInputs, LossConfig], dict[str, torch.Tensor]]  # the softmax (CLIP) form
    uses_negatives: bool = True  # False: the trainer does not even encode the hard negatives
    needs_reference: bool = False  # a frozen copy of the starting model
    uses_weight: bool = False  # λ (`--hard_negative_weight`, its schedule) scales a term of this loss
    # Whether a step with these settings needs per-token/per-patch embeddings (`TokenEmbeddings`; costly: asked only
    # when a term reads them).
    needs_tokens: Callable[[LossConfig], bool] = lambda cfg: False
    # The `LossConfig` settings (flags of the same names) only this loss reads; a run of another loss refuses them
    # off their defaults (`flag_readers`). λ's flags go with `uses_weight`.
    flags: tuple[str, ...] = ()
    # Forms for other contrastive terms, by `ModelFamily.contrastive` ("sigmoid": SigLIP).
    variants: dict = field(default_factory=dict)
    # Why a form is missing, by kind, for the refusal's message.
    no_variant_reasons: dict = field(default_factory=dict)

    def for_contrastive(self, kind: str) -> LossSpec:
        """This loss in the form for a family's contrastive term; ValueError if it has none."""
        if kind == "softmax":
            return self
        if kind not in self.variants:
            reason = f": {self.no_variant_reasons[kind]}" if kind in self.no_variant_reasons else ""
            raise ValueError(f"no {kind} form of this loss{reason} (loss types with one: {losses_for(kind)})")
        return replace(self, fn=self.variants[kind])


LOSSES: dict[str, LossSpec] = {
    "clip": LossSpec(clip_loss, uses_negatives=False, variants={"sigmoid": sigmoid_clip_loss}),
    "hnc": LossSpec(hnc_loss, uses_weight=True, variants={"sigmoid": sigmoid_hnc_loss}),
    "pairwise": LossSpec(pairwise_loss, uses_weight=True, variants={"sigmoid": sigmoid_pairwise_loss}),
    "thesis_l2": LossSpec(thesis_l2_loss, uses_weight=True),
    "kl_teacher": LossSpec(kl_teacher_loss, needs_reference=True, uses_weight=True,
                           flags=("kl_weight", "kl_temperature")),
    "dpo": LossSpec(dpo_loss, needs_reference=True, variants={"sigmoid": sigmoid_dpo_loss},
                    flags=("dpo_beta", "dpo_contrastive_weight")),
    "negclip": LossSpec(negclip_loss),
    "fsc_clip": LossSpec(fsc_clip_loss, uses_weight=True, variants={"sigmoid": sigmoid_fsc_clip_loss},
                         needs_tokens=lambda cfg: cfg.fsc_local_weight > 0,
                         flags=("fsc_focal_gamma", "fsc_label_smoothing", "fsc_local_weight", "fsc_local_normalizer",
                                "fsc_local_sparsify")),
    "ce_clip": LossSpec(ce_clip_loss, flags=("ce_clip_imc_weight", "ce_clip_cmr_weight", "ce_clip_threshold_max"),
                        no_variant_reasons={"sigmoid": (
        "CE-CLIP's intra-modal softmax weighs an image–text logit against text–text ones, and SigLIP's image–text "
        "logits carry a learned bias that text–text similarities have no counterpart of")}),
}


# λ and its schedule: read by the losses that have a λ (`LossSpec.uses_weight`).
WEIGHT_FLAGS = ("hard_negative_weight", "hard_negative_schedule", "hard_negative_weight_min",
                "hard_negative_warmup_steps", "hard_negative_step_size", "hard_negative_step_every")  # fmt: skip


def flag_readers() -> dict[str, list[str]]:
    """Each flag only some losses read → those loss types (λ's flags: the losses with a λ; NegCLIP's negatives sit
    in its image→text softmax unweighted)."""
    readers = {flag: [name for name, spec in LOSSES.items() if spec.uses_weight] for flag in WEIGHT_FLAGS}
    for name, spec in LOSSES.items():
        for flag in spec.flags:
            readers.setdefault(flag, []).append(name)
    return readers


def losses_for(kind: str) -> list[str]:
    """The loss types that train a family with this contrastive term."""
    return sorted(name for name, spec in LOSSES.items() if kind == "softmax" or kind in spec.variants)


def loss_components(
    fn: Callable[[LossInputs, LossConfig], dict[str, torch.Tensor]], inp: LossInputs, cfg: LossConfig
) -> dict[str, torch.Tensor]:
    """`fn`'s components plus what every loss may carry: λ_reg · Σ‖θ−θ₀‖² (`l2_reg_loss`, `--l2_reg_weight`),
    a pull towards the starting weights θ₀ that protects what the model already knew."""
    out = fn(inp, cfg)
    if cfg.l2_reg_weight > 0:
        if inp.param_sq_dist is None:
            raise ValueError("l2_reg_weight > 0 needs LossInputs.param_sq_dist (Σ‖θ−θ₀‖²)")
        out["l2_reg_loss"] = cfg.l2_reg_weight * inp.param_sq_dist
    return out


# ---------------------------------------------------------------------------------------------------------------
# Monitoring (no gradient)


@torch.no_grad()
def loss_for_family(loss_type: str, family, cfg: LossConfig | None = None):
    """`--loss_type` in the form for the model's family (softmax for CLIP, sigmoid for SigLIP), naming the flag.
    With `cfg`, also refuses settings that need token embeddings the family does not have."""
    try:
        spec = LOSSES[loss_type].for_contrastive(family.contrastive)
    except ValueError as err:
        raise ValueError(f"--loss_type {loss_type} does not train a {family.name} model: {err}") from None
    if cfg is not None and spec.needs_tokens(cfg) and family.token_embeddings is None:
        raise ValueError(
            f"--fsc_local_weight {cfg.fsc_local_weight}: FSC-CLIP's local term compares caption tokens with image "
            f"patches in the joint space, which a {family.name} model has no projection into (its vision tower pools "
            "the patches by attention before its head); train its global terms with --fsc_local_weight 0"
        )
    return spec


def similarity_stats(emb: Embeddings) -> dict[str, torch.Tensor]:
    """Mean cosine of each image to its positive, its hard negative and other images' positives; margin; accuracy.

    `hard_negative_accuracy` is the in-batch rate of cos(i, p_i) > cos(i, n_i): the quantity HNC evaluation
    reports, tracked during training. 0-dim detached tensors on the embeddings' device (no host sync).
    """
    emb_image = emb.image.detach()
    pos = (emb_image * emb.positive.detach()).sum(-1)  # [B]
    sim = emb_image @ emb.positive.detach().T  # [B, B]
    other = ~torch.eye(len(emb), dtype=torch.bool, device=sim.device)
    if emb.image_ids is not None:
        other &= emb.image_ids[:, None] != emb.image_ids[None, :]
    # Mean over the off-diagonal pairs, NaN if there are none: sum/count, not boolean indexing (which syncs).
    count = other.sum()
    rand = (sim * other).sum() / count.clamp(min=1)
    rand = torch.where(count > 0, rand, torch.full_like(rand, float("nan")))
    stats = {"cos_positive": pos.mean(), "cos_random_negative": rand}
    if emb.negative is not None:
        neg = (emb_image[None] * emb.own_negatives().detach()).sum(-1)  # [K, B]
        mask = emb.own_negative_mask()  # [K, B]
        if mask is None:
            stats.update(
                cos_hard_negative=neg.mean(),
                margin=(pos[None] - neg).mean(),
                hard_negative_accuracy=(pos[None] > neg).float().mean(),  # over the B·K (positive, negative) pairs
            )
        else:  # over the real negatives only (NaN when there is none), without a host sync
            n = mask.sum()

            def mean(x: torch.Tensor) -> torch.Tensor:
                value = (x * mask).sum() / n.clamp(min=1)
                return torch.where(n > 0, value, torch.full_like(value, float("nan")))

            stats.update(cos_hard_negative=mean(neg), margin=mean(pos[None] - neg),
                         hard_negative_accuracy=mean((pos[None] > neg).float()))  # fmt: skip
    return stats


def step_metrics(components: dict, local: Embeddings, cfg: LossConfig, logit_scale) -> dict:
    """What a step logs as means, as (device) tensors: nothing here waits for the GPU."""
    metrics = dict(components)
    metrics.update(similarity_stats(local))
    metrics["hard_negative_weight"] = cfg.hard_negative_weight
    metrics["logit_scale"] = logit_scale
    thresholds = (cfg.state or {}).get("ce_clip_thresholds")  # [K] CE-CLIP's, after this step
    if thresholds is not None:
        metrics["ce_clip_threshold"] = thresholds.mean()
    return metrics
