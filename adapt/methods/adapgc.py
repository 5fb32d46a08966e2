"""AdaPGC: adaptive probabilistic Gaussian calibration for multi-modal test-time adaptation.

Paper: C. Sun, F. Xu, J. Li, J. Xu, X. Xu, Y. Li, "Multi-modal Test-time Adaptation via Adaptive Probabilistic
Gaussian Calibration", CVPR 2026 (arXiv 2604.19093). Upstream: XuJinglinn/AdaPGC at commit 731510d
(``TTA/ADAPGC.py``, ``models/cav_mae.py``, ``run_adapgc.py``, ``script/run_adapgc.sh``) and ``torch_ema`` 0.3; spec
``spec/method-adapgc.md``.

Per batch (spec section 3): one forward gives the logits ``z``, the fused feature ``f`` and unimodal features
``c_a``, ``c_v`` (the fusion block on one modality's tokens; all outputs of ``mlp_head.0``). Three class-conditional
Gaussian models (``G_f``, ``G_a``, ``G_v``, initialised from the classifier) absorb ``f``, ``c_a``, ``c_v`` with the
responsibilities ``softmax(z)``; their log-joints ``g^f``, ``g^a``, ``g^v`` give the symmetric KLs ``D_a``, ``D_v``
that pick, per sample, the InfoNCE direction (tau 0.05; the anchor of the less reliable modality is pulled to the
detached other). Fusion ``qkv`` (Adam #1): ``L1 = READ's confidence term - balance + w_g CE(softmax(g^f), z)``;
every LayerNorm (Adam #2): ``w_c L_c``; both gradients at the pre-step weights. Then the EMA of the trained tensors
(torch_ema's warm-up decay) and the scored logits ``z^EMA + gamma g^f``.

FIX: 1 (EMA shadows start from the loaded ``qkv``; ``ema_init="released"`` for the release's random q/k/v shadows),
3 and 12 (EMA and gradients of the trained tensors only), 4 (mixture weights in the log domain), 5 (components never
seen keep their mean and covariance), 8 (no unused second moments), 11 (``autograd.grad`` of both losses before any
step, no in-place conflict), 14 (complete pairs only, fp32 buffers), 15 (``z_hat`` added in fp32), 16 (one triangular
solve of ``x - mu_k`` per class), 17 (Gaussians on the model's device). KEEP: 2 (warm-up decay), 6 (covariance only
grows: ``Sigma_k += 0.1 dQ_k / N_k``), 7, 9, 10 (posterior not detached in ``L_gmm``), 13, 18 (lr of the base config
for both optimisers, 1e-4), 19-22.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MethodConfig, TTAMethod
from .losses import balance_entropy, confidence_term

logger = logging.getLogger(__name__)

__all__ = ["AdaPGC", "AdaPGCConfig", "GaussianClassModel", "symmetric_kl"]

_EMA_INITS = ("loaded", "released")


@dataclass(frozen=True, kw_only=True)
class AdaPGCConfig(MethodConfig):
    """Attributes:
    w_c: weight of the one-way InfoNCE loss of the LayerNorms (KS50 script 0.01; CLI default 1).
    w_g: weight of the Gaussian cross-entropy in the fusion loss (1).
    gamma: weight of the Gaussian logits added to the scored logits (KS50 script 1; CLI default 0.1).
    tau: InfoNCE temperature (0.05, hard-coded upstream).
    confidence_gamma: READ's confidence threshold (1/e).
    gmm_alpha: Gaussian update momentum of weights and means (0.9).
    reg_covar: first Cholesky jitter (1e-6; then x10, 5 attempts).
    ema_decay: EMA decay cap (0.999).
    ema_warmup: KEEP 2: torch_ema's decay ``min(ema_decay, (1 + n) / (10 + n))``; False = constant ``ema_decay``.
    ema_init: "loaded" (FIX 1: the EMA starts from the loaded weights) or "released" (the release's shadows of the
        fusion q/k/v are fresh xavier-uniform draws, zero biases, from ``self.generator``'s seed).
    """

    w_c: float = 0.01
    w_g: float = 1.0
    gamma: float = 1.0
    tau: float = 0.05
    confidence_gamma: float = math.exp(-1)
    gmm_alpha: float = 0.9
    reg_covar: float = 1e-6
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ema_init: str = "loaded"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("w_c", "w_g", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r} (adapt/methods/adapgc.py)")
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau!r} (adapt/methods/adapgc.py)")
        if not 0 < self.confidence_gamma < 1:
            raise ValueError(
                f"confidence_gamma must be in (0, 1), got {self.confidence_gamma!r} (adapt/methods/adapgc.py)"
            )
        for name in ("gmm_alpha", "ema_decay"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r} (adapt/methods/adapgc.py)")
        if not self.reg_covar > 0:
            raise ValueError(f"reg_covar must be positive, got {self.reg_covar!r} (adapt/methods/adapgc.py)")
        if self.ema_init not in _EMA_INITS:
            raise ValueError(f"ema_init must be one of {_EMA_INITS}, got {self.ema_init!r} (adapt/methods/adapgc.py)")


def symmetric_kl(first: Tensor, second: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-row ``(KL(P||Q) + KL(Q||P)) / 2`` of the softmaxes of two ``[B, C]`` logits, clamped below at ``eps``."""
    p = first.softmax(dim=-1).clamp_min(eps)
    q = second.softmax(dim=-1).clamp_min(eps)
    return 0.5 * ((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1))


class GaussianClassModel:
    """One full-covariance Gaussian per class, updated online with soft responsibilities (spec 3.1), fp32.

    State: ``log_weights [K]`` (log of the unnormalised mixture weights, FIX 4), ``means [K, D]``, ``covariances``
    and their Cholesky factors ``[K, D, D]``, ``log_det [K]``, soft counts ``nk [K]``, sums ``sk [K, D]``, total ``n``.
    """

    def __init__(self, weight: Tensor, bias: Tensor, *, alpha: float = 0.9, reg_covar: float = 1e-6) -> None:
        self.alpha = alpha
        self.reg_covar = reg_covar
        self._weight = weight.detach().float().clone()
        self._bias = bias.detach().float().clone()
        self.reset()

    @property
    def num_classes(self) -> int:
        return self._weight.shape[0]

    @property
    def dim(self) -> int:
        return self._weight.shape[1]

    @torch.no_grad()
    def reset(self) -> None:
        """Initial state: means = classifier rows, identity covariances, ``ln pi_k = b_k + ||W_k||^2 / 2``."""
        num, dim, device = self.num_classes, self.dim, self._weight.device
        self.means = self._weight.clone()
        eye = torch.eye(dim, device=device)
        self.covariances = eye.expand(num, dim, dim).clone()
        self.cholesky = eye.expand(num, dim, dim).clone()
        self.log_det = torch.zeros(num, device=device)
        # logdet = 0 at the identity, so it drops out of the initial weight (spec 3.1)
        self.log_weights = self._bias + 0.5 * self.log_det + 0.5 * self.means.square().sum(1)
        self.nk = torch.zeros(num, device=device)
        self.sk = torch.zeros(num, dim, device=device)
        self.n = torch.zeros((), device=device)

    @torch.no_grad()
    def update(self, x: Tensor, resp: Tensor) -> None:
        """Absorb features ``x [B, D]`` with responsibilities ``resp [B, K]`` (both cast to fp32)."""
        x, resp = x.detach().float(), resp.detach().float()
        alpha = self.alpha
        dn = resp.sum(0)
        self.nk += dn
        self.sk += resp.t() @ x
        self.n += dn.sum()
        ratio = self.nk / self.n
        self.log_weights = torch.logaddexp(math.log(alpha) + self.log_weights, math.log(1 - alpha) + ratio.log())
        seen = self.nk > 0  # FIX 5: a component no sample has touched keeps its mean and covariance (0/0 upstream)
        nk = torch.where(seen, self.nk, torch.ones_like(self.nk))
        means = alpha * self.means + (1 - alpha) * self.sk / nk.unsqueeze(1)
        self.means = torch.where(seen.unsqueeze(1), means, self.means)
        # KEEP 6: the reference's covariance update is algebraically Sigma_k + (1 - alpha) dQ_k / N_k with
        # dQ_k = sum_b resp_bk x_b x_b^T; accumulated as one batched product without a [K, D, D] temporary.
        # resp_bk / N_k is in [0, 1] (N_k sums resp_bk): dividing first stays finite when a very confident model gives
        # N_k of ~1e-40, where (1 - alpha) / N_k would overflow to inf (0 for the unseen components: resp = 0).
        frac = (1 - alpha) * resp / nk
        weighted = frac.t().unsqueeze(2) * x.unsqueeze(0)  # [K, B, D]
        self.covariances.baddbmm_(weighted.transpose(1, 2), x.unsqueeze(0).expand(self.num_classes, -1, -1))
        self._factor()

    def _factor(self) -> None:
        cov, jitter = self.covariances, self.reg_covar
        eye = torch.eye(self.dim, device=cov.device)
        for _ in range(5):
            chol, info = torch.linalg.cholesky_ex(cov)
            if not bool((info != 0).any()):
                self.cholesky = chol
                self.log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
                return
            cov = cov + jitter * eye  # only the factor sees the jitter, as upstream
            jitter *= 10
        raise RuntimeError(
            "AdaPGC: a class covariance is not positive definite even with jitter (adapt/methods/adapgc.py)"
        )

    def logits(self, x: Tensor) -> Tensor:
        """Log-joint ``ln pi_k - log_det_k / 2 - M_bk / 2 - (D/2) ln 2 pi`` of ``x [B, D]`` -> ``[B, K]`` (fp32).

        Differentiable in ``x``. ``M`` is the squared Mahalanobis distance as ``||L_k^-1 (x - mu_k)||^2`` (one
        triangular solve per class, FIX 16; the reference expands it into three Cholesky solves per sample).
        """
        x = x.float()
        diff = x.unsqueeze(0) - self.means.unsqueeze(1)  # [K, B, D]
        white = torch.linalg.solve_triangular(self.cholesky, diff.transpose(1, 2), upper=False)  # [K, D, B]
        maha = white.square().sum(1).t()
        const = -0.5 * (self.dim * math.log(2 * math.pi))
        return self.log_weights - 0.5 * self.log_det - 0.5 * maha + const

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the state tensors (``weights`` is ``exp(log_weights)``, as the reference stores them)."""
        return {
            "log_weights": self.log_weights.clone(), "means": self.means.clone(),
            "covariances": self.covariances.clone(), "log_det": self.log_det.clone(), "nk": self.nk.clone(),
            "sk": self.sk.clone(), "n": self.n.clone(),
        }  # fmt: skip

    def nbytes(self) -> int:
        """Bytes held by the state tensors."""
        return sum(t.numel() * t.element_size() for t in (*self.state_dict().values(), self.cholesky))


class AdaPGC(TTAMethod):
    """Gaussian-calibrated READ-style fusion adaptation with reliability-directed InfoNCE on the LayerNorms."""

    name = "adapgc"
    config_class = AdaPGCConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "ks50": {},  # script/run_adapgc.sh: --w-c 0.01 --w-g 1 --gamma 1 (the defaults here)
        "vggsound": {"w_c": 1.0, "gamma": 0.1},  # no script: run_adapgc.py's CLI defaults
    }

    def trainable_groups(self) -> tuple[str, ...]:
        return ("fusion_qkv", "norms")

    def init_state(self) -> None:
        cfg = self.config
        m = self.model
        if len(m.blocks_u) != 1:
            raise ValueError(
                f"AdaPGC expects one fusion block, the model has {len(m.blocks_u)} (adapt/methods/adapgc.py)"
            )
        head = m.mlp_head[1]
        self.gaussians = {
            key: GaussianClassModel(head.weight, head.bias, alpha=cfg.gmm_alpha, reg_covar=cfg.reg_covar)
            for key in ("f", "a", "v")
        }
        self._qkv_names = set(m.param_groups()["fusion_qkv"])
        # Initial EMA shadows of the trained tensors, restored by reset_state.
        self.ema_initial: dict[str, Tensor] = {}
        if cfg.ema_init == "released":
            # The release's EMA copied the fusion q/k/v Linears before they were linked to qkv: fresh xavier weights
            # and zero biases (spec bug 1). Drawn from a generator of config.seed (a test copies the golden's in).
            gen = torch.Generator().manual_seed(cfg.seed)
            qkv = m.blocks_u[0].attn.qkv
            dim = qkv.weight.shape[1]
            rows = [nn.init.xavier_uniform_(torch.empty(dim, dim), generator=gen) for _ in range(3)]
            self.ema_initial["blocks_u.0.attn.qkv.weight"] = torch.cat(rows).to(qkv.weight)
            if qkv.bias is not None:
                self.ema_initial["blocks_u.0.attn.qkv.bias"] = torch.zeros_like(qkv.bias)

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam #1 over the fusion ``qkv``; the LayerNorms' Adam #2 is built in :meth:`reset_state`."""
        cfg = self.config
        qkv = [p for n, p in self.named_params if n in self._qkv_names]
        return torch.optim.Adam(qkv, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def reset_state(self) -> None:
        cfg = self.config
        for gaussian in self.gaussians.values():
            gaussian.reset()
        self._norm_params = [(n, p) for n, p in self.named_params if n not in self._qkv_names]
        self._qkv_params = [(n, p) for n, p in self.named_params if n in self._qkv_names]
        # A fresh Adam is exactly the initial optimiser state.
        self.norm_optimizer = torch.optim.Adam(
            [p for _, p in self._norm_params], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        with torch.no_grad():
            self.ema_shadow = {
                n: self.ema_initial[n].to(p, copy=True) if n in self.ema_initial else p.detach().clone()
                for n, p in self.named_params
            }
        self.ema_updates = 0
        self.last_step: dict[str, Any] = {}

    # ------------------------------------------------------------------ pieces
    def adaptation_forward(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Logits ``z``, fused feature ``f`` and unimodal features ``c_a``, ``c_v`` (spec 2, ``forward_full``)."""
        m = self.model
        with self.autocast():
            a = m.run_stack(m.embed_audio(audio), "a")
            v = m.run_stack(m.embed_video(video), "v")
            feat = m.mlp_head[0](m.pool(m.fuse(torch.cat((a, v), dim=1), "u"), "norm"))
            logits = m.mlp_head[1](feat)
            # the fusion block with its unified norms on one modality, that modality's final norm, the head norm
            feat_a = m.mlp_head[0](m.pool(m.fuse(a, "u"), "norm_a"))
            feat_v = m.mlp_head[0](m.pool(m.fuse(v, "u"), "norm_v"))
        return logits, feat.float(), feat_a.float(), feat_v.float()

    def contrast_loss(self, feat_a: Tensor, feat_v: Tensor, v2a: Tensor, a2v: Tensor) -> Tensor | None:
        """One-way InfoNCE: rows ``v2a`` pull video to the detached audio, rows ``a2v`` audio to video (spec 3.6).

        Returns None when both sets are empty (every ``D`` NaN: the reference's loss then has no graph, KEEP 22).
        """
        tau = self.config.tau
        a_hat = F.normalize(feat_a, p=2, dim=-1)
        v_hat = F.normalize(feat_v, p=2, dim=-1)
        parts, terms = [], 0
        for anchor, target, rows in ((v_hat, a_hat, v2a), (a_hat, v_hat, a2v)):
            index = torch.nonzero(rows, as_tuple=True)[0]
            if index.numel():
                sims = anchor.index_select(0, index) @ target.detach().t() / tau
                parts.append(F.cross_entropy(sims, index, reduction="sum"))
                terms += index.numel()
        return torch.stack(parts).sum() / terms if terms else None

    @torch.no_grad()
    def _ema_update(self) -> None:
        cfg = self.config
        self.ema_updates += 1
        n = self.ema_updates
        decay = min(cfg.ema_decay, (1 + n) / (10 + n)) if cfg.ema_warmup else cfg.ema_decay
        # torch_ema's arithmetic, s <- s - (1 - d) (s - p), as three fused multi-tensor kernels
        shadows = [self.ema_shadow[name] for name, _ in self.named_params]
        diffs = torch._foreach_sub(shadows, [p.detach() for _, p in self.named_params])
        torch._foreach_mul_(diffs, 1.0 - decay)
        torch._foreach_sub_(shadows, diffs)

    @torch.no_grad()
    def ema_logits(self, audio: Tensor, video: Tensor) -> Tensor:
        """Multimodal logits with the EMA shadows swapped in for the trained tensors (then swapped back)."""
        params = [p for _, p in self.named_params]
        saved = [p.detach().clone() for p in params]
        torch._foreach_copy_(params, [self.ema_shadow[name] for name, _ in self.named_params])
        try:
            return self.forward_logits(audio, video)
        finally:
            torch._foreach_copy_(params, saved)

    def _step(self, optimizer: torch.optim.Optimizer, named: list[tuple[str, nn.Parameter]], grads: tuple) -> None:
        for (_, p), g in zip(named, grads, strict=True):
            p.grad = g
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    # ------------------------------------------------------------------ step
    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        cfg = self.config
        logits, feat, feat_a, feat_v = self.adaptation_forward(audio, video)
        z = self.loss_input(logits)
        probs = z.softmax(dim=-1)
        loss_ra = confidence_term(probs, cfg.confidence_gamma)
        loss_bal = balance_entropy(probs)

        g_f, g_a, g_v = self.gaussians["f"], self.gaussians["a"], self.gaussians["v"]
        resp = probs.detach().float()
        g_f.update(feat, resp)
        g_a.update(feat_a, resp)
        g_v.update(feat_v, resp)
        gmm_logits = g_f.logits(feat)  # differentiable in feat (KEEP 10)
        with torch.no_grad():
            gmm_a = g_a.logits(feat_a)
            gmm_v = g_v.logits(feat_v)
            d_a = symmetric_kl(gmm_logits, gmm_a)
            d_v = symmetric_kl(gmm_logits, gmm_v)
            v2a = d_a < d_v
            a2v = d_v <= d_a  # KEEP 22: a NaN D puts its sample in neither set
        loss_c = self.contrast_loss(feat_a, feat_v, v2a, a2v)
        loss_gmm = -(gmm_logits.softmax(dim=1) * z.log_softmax(dim=1)).sum(dim=1).mean()
        loss = loss_ra - loss_bal + cfg.w_g * loss_gmm

        # FIX 11: both gradients at the pre-step weights, each only for its own optimiser's tensors (FIX 12).
        scale = self.scaler.scale if self.scaler is not None else (lambda t: t)
        qkv = [p for _, p in self._qkv_params]
        norms = [p for _, p in self._norm_params]
        grads_qkv = torch.autograd.grad(scale(loss), qkv, retain_graph=loss_c is not None)
        grads_norm = None
        if loss_c is not None:
            grads_norm = torch.autograd.grad(scale(cfg.w_c * loss_c), norms, allow_unused=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.norm_optimizer.zero_grad(set_to_none=True)
        self._step(self.optimizer, self._qkv_params, grads_qkv)
        if grads_norm is not None:
            # unused LayerNorms keep grad None, so Adam skips them exactly as upstream
            self._step(self.norm_optimizer, self._norm_params, grads_norm)
        if self.scaler is not None:
            self.scaler.update()
        self.norm_optimizer.zero_grad(set_to_none=True)

        self._ema_update()
        z_ema = self.ema_logits(audio, video)
        scored = z_ema.float() + cfg.gamma * gmm_logits.detach()  # FIX 15: added in fp32
        self.last_step = {
            "pre_logits": logits.detach(), "ema_logits": z_ema.detach(), "gmm_logits": gmm_logits.detach(),
            "gmm_a_logits": gmm_a, "gmm_v_logits": gmm_v, "D_a": d_a, "D_v": d_v, "v2a_mask": v2a,
            "feat": feat.detach(), "ca": feat_a.detach(), "cv": feat_v.detach(),
            "losses": torch.stack([loss_ra.detach().float(), loss_bal.detach().float(), loss_gmm.detach().float(),
                                   (loss_c.detach() if loss_c is not None else torch.zeros_like(loss_gmm)).float()]),
        }  # fmt: skip
        return scored
