"""CAV-MAE fine-tuned audio-visual classifier (CAVMAEFT), built from ``timm.layers``.

Paper: Gong et al., "Contrastive Audio-Visual Masked Autoencoder", ICLR 2023.
Upstream code: https://github.com/YuanGongND/cav-mae (``src/models/cav_mae.py``, class ``CAVMAEFT``).
Behaviour follows the project specification (``spec/model-cav-mae.md``); parameter names equal the released
checkpoints' keys without the ``module.`` prefix, so those checkpoints load strictly (see ``checkpoint.py``).

One composition, used by ``forward``, training's ``eval_logits``, BriMPR and the source statistics alike:
:meth:`CAVMAEFT.encode` (tokens -> optional masking hook -> a modality's own blocks, with optional deep prompts and
per-block features) -> :meth:`CAVMAEFT.fuse_pool` (fusion block, final LayerNorm, mean; per forward mode) ->
:meth:`CAVMAEFT.forward_head`. Methods and training reach the model through that contract and through
``get_classifier()``, ``no_weight_decay()``, ``param_groups()`` / ``select_parameters()`` and ``depth``,
``embed_dim``, ``num_classes``; the smaller pieces (``embed_audio``, ``run_stack``, ``fuse``, ``pool``, ``head``,
``keep_tokens``) stay public.

Deliberate differences from the references (spec README items 6 and 10): the fusion block owns one ``qkv``
projection only (no READ/BriMPR ``q``/``k``/``v`` views), and every forward mode works in training and eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from timm.layers import Attention, Mlp, PatchEmbed
from torch import Tensor, nn

from .gemm import to_gemm_linear
from .registry import register_model

__all__ = [
    "ARCH_ARGS",
    "MODES",
    "Block",
    "CAVMAEFT",
    "cav_mae_ft_base",
    "cav_mae_ft_test",
    "cav_mae_ft_tiny",
    "sincos_pos_embed_2d",
]

# Forward modes (spec model-cav-mae.md section 6); "features" is BriMPR's addition used by T3A.
MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly", "features")
_AUDIO_MODES = {"multimodal", "audioonly", "missingaudioonly", "features"}
_VIDEO_MODES = {"multimodal", "videoonly", "missingvideoonly", "features"}
_FINAL_NORMS = ("norm", "norm_a", "norm_v")
_EMBED_NAMES = ("modality_a", "modality_v", "pos_embed_a", "pos_embed_v", "patch_embed_a", "patch_embed_v")
_LN_EPS = 1e-5  # plain nn.LayerNorm default, as in the references (not timm ViT's 1e-6)


def sincos_pos_embed_2d(dim: int, rows: int, cols: int) -> Tensor:
    """Fixed 2-D sine-cosine table (MAE recipe as used by CAV-MAE), ``[rows * cols, dim]`` float32.

    Token ``m = i * cols + j`` gets ``[sin(j w), cos(j w), sin(i w), cos(i w)]`` with ``w_k = 10000^(-k / (dim/4))``:
    the first half encodes the column ``j`` (for audio: the time chunk), the second half the row ``i``.
    Computed in float64 and cast to float32, like the reference.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos positional embedding needs a width divisible by 4, got embed_dim={dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    row, col = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(col), encode(row)], axis=1)
    return torch.from_numpy(table).float()


class Block(nn.Module):
    """Pre-norm transformer block with three LayerNorm pairs (unified, audio, video) sharing attention and MLP.

    The selector passed to :meth:`forward` picks the pair: ``None``/``"u"`` -> ``norm1``/``norm2``,
    ``"a"`` -> ``norm1_a``/``norm2_a``, ``"v"`` -> ``norm1_v``/``norm2_v``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        # Registration order = the released state-dict order (spec section 7).
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm1_a = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm1_v = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm2_a = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm2_v = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)  # exact (erf) GELU
        # The four projections hold nearly all of a block's work: oneDNN products on fp32 CPUs (see gemm.py).
        # Replaced in place, so names and the state-dict order stay timm's.
        for owner, name in ((self.attn, "qkv"), (self.attn, "proj"), (self.mlp, "fc1"), (self.mlp, "fc2")):
            setattr(owner, name, to_gemm_linear(getattr(owner, name)))

    def norms(self, modality: str | None = None) -> tuple[nn.LayerNorm, nn.LayerNorm]:
        """The (pre-attention, pre-MLP) LayerNorm pair for a selector."""
        if modality is None or modality == "u":
            return self.norm1, self.norm2
        if modality == "a":
            return self.norm1_a, self.norm2_a
        if modality == "v":
            return self.norm1_v, self.norm2_v
        raise ValueError(f"unknown LayerNorm selector modality={modality!r}; expected None, 'u', 'a' or 'v'")

    def forward(self, x: Tensor, modality: str | None = None) -> Tensor:
        norm1, norm2 = self.norms(modality)
        x = x + self.attn(norm1(x))
        return x + self.mlp(norm2(x))


class CAVMAEFT(nn.Module):
    """CAV-MAE fine-tuned classifier: audio and video stacks, one shared fusion block, mean pooling, MLP head.

    Inputs: ``audio`` normalised log-mel fbank ``[B, audio_length, num_mel_bins]`` (time-major) and ``video``
    ImageNet-normalised frames ``[B, in_chans, img_size, img_size]``.

    Args:
        num_classes: classifier outputs (Kinetics50: 50, VGGSound: 309).
        audio_length: fbank frames T; the audio grid is ``num_mel_bins / patch_size`` rows (frequency) x
            ``T / patch_size`` columns (time): 8 x 64 = 512 tokens for the released models.
        img_size: square frame side; the video grid is ``img_size / patch_size`` squared (14 x 14 = 196).
        embed_dim: token width D.
        depth: blocks per modality-specific stack (``blocks_a``, ``blocks_v``).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        fusion_depth: shared blocks (``blocks_u``); 1 in the released models.
        patch_size: square, non-overlapping patch side.
        num_mel_bins: fbank bins (frequency axis).
        in_chans: video channels.
        init_seed: seed of the private generator used for the random initialisation (the global RNG is not used).
    """

    def __init__(
        self,
        num_classes: int = 50,
        *,
        audio_length: int = 1024,
        img_size: int = 224,
        embed_dim: int = 768,
        depth: int = 11,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        fusion_depth: int = 1,
        patch_size: int = 16,
        num_mel_bins: int = 128,
        in_chans: int = 3,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes), ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads),
            ("fusion_depth", fusion_depth), ("patch_size", patch_size), ("in_chans", in_chans),
        ):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CAVMAEFT: {name} must be a positive int, got {value!r}")
        for name, value in (("audio_length", audio_length), ("img_size", img_size), ("num_mel_bins", num_mel_bins)):
            if not isinstance(value, int) or value < patch_size or value % patch_size:
                raise ValueError(f"CAVMAEFT: {name}={value!r} must be a positive multiple of patch_size={patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"CAVMAEFT: embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if embed_dim % 4:
            raise ValueError(f"CAVMAEFT: embed_dim={embed_dim} must be divisible by 4 (sin-cos positions)")

        # Every constructor argument, so a checkpoint's JSON config rebuilds the same architecture.
        self.arch_config: dict = {
            "num_classes": num_classes, "audio_length": audio_length, "img_size": img_size, "embed_dim": embed_dim,
            "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio, "fusion_depth": fusion_depth,
            "patch_size": patch_size, "num_mel_bins": num_mel_bins, "in_chans": in_chans, "init_seed": init_seed,
        }  # fmt: skip
        self.variant: str | None = None  # registry name, set by the entry functions below
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depth = depth
        self.fusion_depth = fusion_depth
        self.audio_length = audio_length
        self.num_mel_bins = num_mel_bins
        self.img_size = img_size
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.audio_grid = (num_mel_bins // patch_size, audio_length // patch_size)  # (frequency rows, time cols)
        self.video_grid = (img_size // patch_size, img_size // patch_size)
        self.num_audio_patches = self.audio_grid[0] * self.audio_grid[1]
        self.num_video_patches = self.video_grid[0] * self.video_grid[1]

        # Built on the meta device and initialised explicitly below, so construction neither draws from nor
        # advances the global RNG. Registration order = the released state-dict order.
        with torch.device("meta"):
            self.modality_a = nn.Parameter(torch.empty(1, 1, embed_dim))
            self.modality_v = nn.Parameter(torch.empty(1, 1, embed_dim))
            # Trainable (tr_pos=True in CAVMAEFT): always loaded from the checkpoint, sin-cos only at init.
            self.pos_embed_a = nn.Parameter(torch.empty(1, self.num_audio_patches, embed_dim))
            self.pos_embed_v = nn.Parameter(torch.empty(1, self.num_video_patches, embed_dim))
            # Audio is tokenised as an image of height = frequency, width = time.
            self.patch_embed_a = PatchEmbed((num_mel_bins, audio_length), patch_size, 1, embed_dim)
            self.patch_embed_v = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
            self.blocks_a = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
            self.blocks_v = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
            self.blocks_u = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(fusion_depth))
            self.norm_a = nn.LayerNorm(embed_dim, eps=_LN_EPS)
            self.norm_v = nn.LayerNorm(embed_dim, eps=_LN_EPS)
            self.norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)
            self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim, eps=_LN_EPS), nn.Linear(embed_dim, num_classes))
        self.to_empty(device="cpu")
        self.init_weights(init_seed)

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Reference initialisation (spec section 3) drawn from a private generator seeded with ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        self.pos_embed_a.copy_(sincos_pos_embed_2d(self.embed_dim, *self.audio_grid).unsqueeze(0))
        self.pos_embed_v.copy_(sincos_pos_embed_2d(self.embed_dim, *self.video_grid).unsqueeze(0))
        for embed in (self.patch_embed_a, self.patch_embed_v):
            weight = embed.proj.weight
            nn.init.xavier_uniform_(weight.view(weight.shape[0], -1), generator=gen)
            bound = 1.0 / math.sqrt(weight[0].numel())  # PyTorch's Conv2d default for the bias
            nn.init.uniform_(embed.proj.bias, -bound, bound, generator=gen)
        nn.init.normal_(self.modality_a, std=0.02, generator=gen)
        nn.init.normal_(self.modality_v, std=0.02, generator=gen)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=gen)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def reset_classifier(self, num_classes: int, seed: int = 0) -> None:
        """Replace ``mlp_head.1`` by a freshly initialised ``Linear(D, num_classes)`` (fine-tuning to new classes)."""
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"reset_classifier: num_classes must be a positive int, got {num_classes!r}")
        old = self.mlp_head[1]
        # meta + explicit init: no draw from the global RNG; initialised on the CPU (where the generator lives)
        linear = nn.Linear(self.embed_dim, num_classes, device="meta").to_empty(device="cpu")
        nn.init.xavier_uniform_(linear.weight, generator=torch.Generator().manual_seed(seed))
        nn.init.zeros_(linear.bias)
        self.mlp_head[1] = linear.to(device=old.weight.device, dtype=old.weight.dtype)
        self.num_classes = num_classes
        self.arch_config["num_classes"] = num_classes

    # ------------------------------------------------------------------ building blocks
    def embed_audio(self, audio: Tensor) -> Tensor:
        """Patch tokens of a normalised fbank ``[B, T, F]`` -> ``[B, num_audio_patches, D]``.

        Token ``m = f * (T/16) + t`` (frequency band ``f``, time chunk ``t``), plus ``pos_embed_a`` and
        ``modality_a``.
        """
        expected = (self.audio_length, self.num_mel_bins)
        if not isinstance(audio, Tensor) or audio.dim() != 3 or tuple(audio.shape[1:]) != expected:
            got = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
            raise ValueError(f"audio must be a [B, {expected[0]}, {expected[1]}] fbank tensor, got {got}")
        x = self.patch_embed_a(audio.unsqueeze(1).transpose(2, 3))  # [B, 1, F, T]: height = frequency
        return x + self.pos_embed_a + self.modality_a

    def embed_video(self, video: Tensor) -> Tensor:
        """Patch tokens of frames ``[B, C, H, W]`` -> ``[B, num_video_patches, D]`` (row-major grid)."""
        expected = (self.in_chans, self.img_size, self.img_size)
        if not isinstance(video, Tensor) or video.dim() != 4 or tuple(video.shape[1:]) != expected:
            got = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"video must be a [B, {', '.join(map(str, expected))}] tensor, got {got}")
        x = self.patch_embed_v(video)
        return x + self.pos_embed_v + self.modality_v

    def run_stack(
        self, tokens: Tensor, modality: str, prompts: Tensor | None = None, layer_features: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run ``blocks_a`` (``modality="a"``) or ``blocks_v`` (``"v"``) with the unified LayerNorms.

        Args:
            tokens: ``[B, N, D]`` (any N: masked token subsets are fine).
            modality: which modality-specific stack.
            prompts: optional deep prompts ``[L, P, D]`` with ``L <= depth``: ``prompts[l]`` is prepended (shared
                across the batch) before block ``l`` and dropped after it (BriMPR, spec methods.md 8.1).
            layer_features: also return ``[B, depth, D]``: for every block ``l`` the mean over the patch tokens
                (prompts excluded) of ``LN_next(tokens after block l)``, where ``LN_next`` is the next block's
                ``norm1`` (the first fusion block's ``norm1`` after the last block; methods.md 8.2 step 3).

        Returns:
            The output tokens ``[B, N, D]``, or ``(tokens, features)`` when ``layer_features``.
        """
        if modality not in ("a", "v"):
            raise ValueError(f"run_stack: modality must be 'a' or 'v', got {modality!r}")
        if tokens.dim() != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(f"run_stack: tokens must be [B, N, {self.embed_dim}], got {tuple(tokens.shape)}")
        blocks = self.blocks_a if modality == "a" else self.blocks_v
        num_prompted = 0
        if prompts is not None:
            if prompts.dim() != 3 or prompts.shape[0] > self.depth or prompts.shape[2] != self.embed_dim:
                raise ValueError(
                    f"run_stack: prompts must be [L <= {self.depth}, P, {self.embed_dim}], got {tuple(prompts.shape)}"
                )
            num_prompted = prompts.shape[0]
        batch = tokens.shape[0]
        feats = []
        x = tokens
        for index, block in enumerate(blocks):
            if index < num_prompted:
                num_prompts = prompts.shape[1]
                layer_prompts = prompts[index].to(x.dtype).unsqueeze(0).expand(batch, -1, -1)
                x = block(torch.cat((layer_prompts, x), dim=1))[:, num_prompts:]
            else:
                x = block(x)
            if layer_features:
                next_norm = blocks[index + 1].norm1 if index + 1 < len(blocks) else self.blocks_u[0].norm1
                feats.append(next_norm(x).mean(dim=1))
        if layer_features:
            return x, torch.stack(feats, dim=1)
        return x

    def fuse(self, tokens: Tensor, selector: str = "u") -> Tensor:
        """Shared fusion block(s) ``blocks_u`` with the LayerNorm pair picked by ``selector`` ("u", "a", "v")."""
        x = tokens
        for block in self.blocks_u:
            x = block(x, selector)
        return x

    def pool(self, tokens: Tensor, norm: str = "norm") -> Tensor:
        """Final LayerNorm (``"norm"``, ``"norm_a"`` or ``"norm_v"``), then the mean over tokens -> ``[B, D]``."""
        if norm not in _FINAL_NORMS:
            raise ValueError(f"pool: norm must be one of {_FINAL_NORMS}, got {norm!r}")
        return getattr(self, norm)(tokens).mean(dim=1)

    def head(self, pooled: Tensor) -> Tensor:
        """Classifier ``mlp_head`` (LayerNorm + Linear) on pooled features -> logits ``[B, num_classes]``."""
        return self.mlp_head(pooled)

    @staticmethod
    def keep_tokens(tokens: Tensor, noise: Tensor, keep: int) -> Tensor:
        """Per sample, keep the ``keep`` tokens with the lowest ``noise`` values, in ascending-noise order.

        ``tokens`` ``[B, N, D]``, ``noise`` ``[B, N]`` (e.g. uniform draws from the caller's generator) ->
        ``[B, keep, D]`` (BriMPR's random masking, spec methods.md 8.2 step 2).
        """
        if noise.shape != tokens.shape[:2]:
            raise ValueError(f"keep_tokens: noise shape {tuple(noise.shape)} != tokens[:2] {tuple(tokens.shape[:2])}")
        if not 0 <= keep <= tokens.shape[1]:
            raise ValueError(f"keep_tokens: keep={keep} outside [0, {tokens.shape[1]}]")
        index = torch.argsort(noise, dim=1)[:, :keep].to(tokens.device)
        return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

    # ------------------------------------------------------------------ the one composition
    def encode(
        self,
        modality: str,
        inputs: Tensor,
        *,
        prompts: Tensor | None = None,
        keep: tuple[Tensor, int] | None = None,
        layer_features: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """One modality up to fusion: tokens (``embed_audio`` / ``embed_video``) -> masking -> its own blocks.

        Args:
            modality: ``"a"`` (``inputs`` = fbank ``[B, T, F]``) or ``"v"`` (frames ``[B, C, H, W]``).
            inputs: the model input of that modality.
            prompts: deep prompts of the stack (hook, see :meth:`run_stack`).
            keep: masking hook ``(noise [B, N], count)``: keep the ``count`` tokens with the lowest noise
                (:meth:`keep_tokens`) before the blocks.
            layer_features: also return the per-block features of :meth:`run_stack`.
        """
        if modality not in ("a", "v"):
            raise ValueError(f"encode: modality must be 'a' or 'v', got {modality!r}")
        tokens = self.embed_audio(inputs) if modality == "a" else self.embed_video(inputs)
        if keep is not None:
            tokens = self.keep_tokens(tokens, *keep)
        return self.run_stack(tokens, modality, prompts=prompts, layer_features=layer_features)

    def fuse_pool(self, audio_tokens: Tensor | None, video_tokens: Tensor | None, route: str = "multimodal") -> Tensor:
        """Fusion, final LayerNorm and mean of encoded tokens -> pooled ``[B, D]`` for a forward mode's route.

        ``multimodal``: both token sets through the unified norms; ``audioonly``/``videoonly``: one set through its
        modality norms; ``missingaudioonly``/``missingvideoonly``: the mean of the unified and the modality pass
        (a multimodal model given one modality; also BriMPR's unimodal representations).
        """
        if route == "multimodal":
            return self.pool(self.fuse(torch.cat((audio_tokens, video_tokens), dim=1), "u"), "norm")
        if route not in MODES or route == "features":
            raise ValueError(f"fuse_pool: unknown route {route!r}; expected one of {MODES[:-1]}")
        selector, tokens = ("a", audio_tokens) if route in _AUDIO_MODES else ("v", video_tokens)
        pooled = self.pool(self.fuse(tokens, selector), f"norm_{selector}")
        if route.startswith("missing"):
            pooled = (self.pool(self.fuse(tokens, "u"), "norm") + pooled) / 2
        return pooled

    def forward_features(
        self,
        audio: Tensor | None,
        video: Tensor | None = None,
        mode: str = "multimodal",
        *,
        prompts: Mapping[str, Tensor] | None = None,
        keep: Mapping[str, tuple[Tensor, int]] | None = None,
    ) -> Tensor:
        """Pooled features ``[B, D]`` before the head: :meth:`encode` of the modalities ``mode`` uses, then
        :meth:`fuse_pool`. ``prompts`` / ``keep`` map ``"a"`` / ``"v"`` to that stack's hook arguments."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if mode in _AUDIO_MODES and audio is None:
            raise ValueError(f"mode {mode!r} needs audio, got None")
        if mode in _VIDEO_MODES and video is None:
            raise ValueError(f"mode {mode!r} needs video, got None")
        prompts, keep = prompts or {}, keep or {}
        encoded = {
            modality: self.encode(modality, inputs, prompts=prompts.get(modality), keep=keep.get(modality))
            for modality, inputs, used in (("a", audio, _AUDIO_MODES), ("v", video, _VIDEO_MODES))
            if mode in used
        }
        route = "multimodal" if mode == "features" else mode
        return self.fuse_pool(encoded.get("a"), encoded.get("v"), route)

    def forward_head(self, pooled: Tensor, pre_logits: bool = False) -> Tensor:
        """Logits of pooled features, or with ``pre_logits`` the head LayerNorm's output (T3A's features)."""
        return self.mlp_head[0](pooled) if pre_logits else self.head(pooled)

    def forward(
        self, audio: Tensor | None, video: Tensor | None = None, mode: str = "multimodal", **hooks: Mapping
    ) -> Tensor:
        """Logits ``[B, num_classes]`` (or ``[B, D]`` features) for one of :data:`MODES`.

        ``multimodal``/``features`` need both inputs; ``audioonly``/``missingaudioonly`` only ``audio`` and
        ``videoonly``/``missingvideoonly`` only ``video`` (the other argument is ignored and may be ``None``).
        ``features`` is the head LayerNorm ``mlp_head[0]`` of the pooled multimodal tokens (BriMPR's T3A input).
        ``hooks`` are the ``prompts=`` and ``keep=`` of :meth:`forward_features` (per-stack hooks of :meth:`encode`).
        """
        pooled = self.forward_features(audio, video, mode, **hooks)
        return self.forward_head(pooled, pre_logits=mode == "features")

    # ------------------------------------------------------------------ contracts of methods and training
    def get_classifier(self) -> nn.Linear:
        """The final ``Linear(D, num_classes)`` (``mlp_head.1``): T3A's templates, the fine-tuning head."""
        return self.mlp_head[1]

    def no_weight_decay(self) -> set[str]:
        """Parameter names trained without weight decay: LayerNorms, embeddings and biases (usual ViT practice)."""
        groups = self.param_groups()
        names = set(groups["norms"]) | set(groups["embed"])
        return names | {name for name, _ in self.named_parameters() if name.endswith(".bias")}

    # ------------------------------------------------------------------ parameter groups
    def param_groups(self) -> dict[str, list[str]]:
        """Parameter names per named group, each in registration order.

        Groups: ``embed`` (modality/positional embeddings, patch embeddings), ``blocks_a``, ``blocks_v``,
        ``blocks_u`` and per block ``blocks_a.{i}``, ``blocks_v.{i}``, ``blocks_u.{i}``; ``fusion_qkv`` (the
        fusion blocks' ``attn.qkv`` weight and bias: READ's parameters); ``head`` (``mlp_head``); ``norms`` (every
        LayerNorm weight and bias), split into ``norms.blocks_a.{i}``, ``norms.blocks_v.{i}``, ``norms.blocks_u.{i}``
        (six LayerNorms per block), their unions ``norms.blocks_a``, ``norms.blocks_v``, ``norms.blocks_u``,
        ``norms.final`` (``norm_a``, ``norm_v``, ``norm``) and ``norms.head`` (``mlp_head.0``).
        """
        groups: dict[str, list[str]] = {"embed": [], "blocks_a": [], "blocks_v": [], "blocks_u": []}
        for stack, count in (("blocks_a", self.depth), ("blocks_v", self.depth), ("blocks_u", self.fusion_depth)):
            groups.update({f"{stack}.{i}": [] for i in range(count)})
        groups.update({"fusion_qkv": [], "head": [], "norms": []})
        for stack, count in (("blocks_a", self.depth), ("blocks_v", self.depth), ("blocks_u", self.fusion_depth)):
            groups[f"norms.{stack}"] = []
            groups.update({f"norms.{stack}.{i}": [] for i in range(count)})
        groups.update({"norms.final": [], "norms.head": []})

        norm_names = {
            f"{module_name}.{param_name}"
            for module_name, module in self.named_modules()
            if isinstance(module, nn.LayerNorm)
            for param_name, _ in module.named_parameters(recurse=False)
        }
        for name, _ in self.named_parameters():
            parts = name.split(".")
            if parts[0] in _EMBED_NAMES:
                groups["embed"].append(name)
            elif parts[0] in ("blocks_a", "blocks_v", "blocks_u"):
                groups[parts[0]].append(name)
                groups[f"{parts[0]}.{parts[1]}"].append(name)
                if parts[0] == "blocks_u" and parts[2:4] == ["attn", "qkv"]:
                    groups["fusion_qkv"].append(name)
            elif parts[0] == "mlp_head":
                groups["head"].append(name)
            if name in norm_names:
                groups["norms"].append(name)
                if parts[0] in ("blocks_a", "blocks_v", "blocks_u"):
                    groups[f"norms.{parts[0]}"].append(name)
                    groups[f"norms.{parts[0]}.{parts[1]}"].append(name)
                elif parts[0] in _FINAL_NORMS:
                    groups["norms.final"].append(name)
                elif parts[0] == "mlp_head":
                    groups["norms.head"].append(name)
        return groups

    def select_parameters(self, *groups: str) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs of the union of named groups, in registration order, without duplicates."""
        known = self.param_groups()
        unknown = [group for group in groups if group not in known]
        if unknown:
            raise ValueError(f"unknown parameter group(s) {unknown}; known groups: {sorted(known)}")
        wanted = {name for group in groups for name in known[group]}
        return [(name, param) for name, param in self.named_parameters() if name in wanted]

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embed_dim={self.embed_dim}, depth={self.depth}+{self.fusion_depth}, "
            f"audio_patches={self.num_audio_patches}, video_patches={self.num_video_patches}"
        )


# ---------------------------------------------------------------------- registered variants
# Constructor arguments a variant accepts as overrides (everything but num_classes).
ARCH_ARGS = (
    "audio_length", "img_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "fusion_depth", "patch_size",
    "num_mel_bins", "in_chans", "init_seed",
)  # fmt: skip


def _create(variant: str, defaults: dict, num_classes: int, overrides: dict) -> CAVMAEFT:
    unknown = sorted(set(overrides) - set(ARCH_ARGS))
    if unknown:
        raise ValueError(f"{variant}: unknown override(s) {unknown}; allowed: {list(ARCH_ARGS)}")
    model = CAVMAEFT(num_classes, **{**defaults, **overrides})
    model.variant = variant
    return model


@register_model
def cav_mae_ft_base(num_classes: int = 50, **overrides) -> CAVMAEFT:
    """The released architecture: 11 + 11 blocks, 1 fusion block, D 768, 12 heads, 512 audio + 196 video tokens."""
    return _create("cav_mae_ft_base", {}, num_classes, overrides)


@register_model
def cav_mae_ft_tiny(num_classes: int = 50, **overrides) -> CAVMAEFT:
    """Real inputs (1024 x 128 fbank, 224-px frames) on a trunk that trains on a CPU in minutes.

    The token count is set by the input sizes and the patch size, and attention cost grows with its square: 32-px
    patches give 4 x 32 = 128 audio + 7 x 7 = 49 video tokens (177 instead of 708, about 4x faster per step than
    16-px patches); D 64, 4 heads, 2 + 2 blocks, 1 fusion block (0.5 M parameters for 10 classes).
    """
    defaults = {"patch_size": 32, "embed_dim": 64, "num_heads": 4, "depth": 2}
    return _create("cav_mae_ft_tiny", defaults, num_classes, overrides)


@register_model
def cav_mae_ft_test(num_classes: int = 50, **overrides) -> CAVMAEFT:
    """Unit-test size, same code path: 32-frame fbank (16 audio tokens), 32-px frames (4 video tokens), D 16."""
    defaults = {"audio_length": 32, "img_size": 32, "embed_dim": 16, "num_heads": 2, "depth": 2}
    return _create("cav_mae_ft_test", defaults, num_classes, overrides)
