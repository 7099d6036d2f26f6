"""Inception-v3 of TensorFlow's 2015-12-05 FID graph (`classify_image_graph_def.pb`), in plain PyTorch.

This is the network the ADM evaluator runs. It differs from torchvision's Inception3 in three places, all
taken from the TF graph:
- the average pools inside the blocks skip padded zeros (TF 'SAME' pooling);
- the last block (Mixed_7c, TF `mixed_10`) pools its pool branch with a max pool;
- the head has 1008 classes.
BatchNorm uses eps 0.001. Module and parameter names follow torch-fidelity's `FeatureExtractorInceptionV3`
(which are torchvision's names), so torch-fidelity's and pytorch-fid's weight files load as they are.

Shape letters: C channels; H, W height and width of an image or feature map; N a flattened count, stated where
used. Here N is the number of images of a batch and C_out a conv's output channels. Inside the network tensors are
NCHW-shaped, usually stored channels-last (faster convolutions on CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 299  # the TF graph's ResizeBilinear target
SPATIAL_CHANNELS = 7  # ADM keeps the first 7 channels of mixed_6/conv (17 x 17 x 7 = 2023 sFID features)
NUM_CLASSES = 1008


def resize_bilinear_tf1(images: Tensor, size: int) -> Tensor:
    """TensorFlow 1.x legacy `ResizeBilinear` (align_corners=False, half_pixel_centers=False, no antialias).

    Output pixel i samples the input at i * (in_size / out_size): the grid is anchored at the top-left
    corner, unlike PyTorch's `interpolate(align_corners=False)`, which samples pixel centres. Neighbours
    are clamped at the border. The arithmetic order is TF's (horizontal lerp per row, then vertical), so on
    CPU the result is bit-exact with torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x`.

    Args:
        images: (N, C, H, W) float tensor (any memory layout).
        size: output height and width.

    Returns:
        (N, C, size, size) tensor of the input's dtype.
    """

    def taps(in_size: int) -> tuple[Tensor, Tensor, Tensor]:
        # TF's kernel computes the scale and the source coordinates in float32.
        scale = torch.tensor(in_size, dtype=torch.float32) / size
        src = torch.arange(size, dtype=torch.float32, device=images.device) * scale.to(images.device)
        lo = src.long()  # src >= 0, so truncation is floor
        hi = (lo + 1).clamp_max(in_size - 1)
        return lo, hi, (src - lo.float()).to(images.dtype)

    y_lo, y_hi, dy = taps(images.shape[2])
    x_lo, x_hi, dx = taps(images.shape[3])
    # Interpolate along W first, on the input rows (fewer rows than the output when upsampling), then pick
    # the two source rows of every output row; per element this is the same arithmetic as TF.
    left, right = images.index_select(3, x_lo), images.index_select(3, x_hi)
    rows = left + (right - left) * dx  # (N, C, H, size)
    top, bottom = rows.index_select(2, y_lo), rows.index_select(2, y_hi)
    return top + (bottom - top) * dy[:, None]  # (N, C, size, size)


class BasicConv2d(nn.Module):
    """One TF `conv` node: convolution without bias, BatchNorm (eps 0.001), ReLU.

    After `fold_batchnorm()` the BatchNorm lives in the convolution's weight and bias and `bn` is None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)  # x is a fresh tensor here

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Fold the eval-mode BatchNorm into the convolution (computed in float64, stored in the conv's dtype)."""
        if self.bn is None:
            return
        bn, weight = self.bn, self.conv.weight
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (C_out,)
        folded = weight.double() * scale[:, None, None, None]
        bias = bn.bias.double() - bn.running_mean.double() * scale
        self.conv.weight = nn.Parameter(folded.to(weight.dtype), requires_grad=False)
        self.conv.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=False)
        self.bn = None


def _tf_avg_pool(x: Tensor) -> Tensor:
    """3x3 stride-1 'SAME' average pool as TF computes it: padded zeros are not counted."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _Block(nn.Module):
    """An Inception block: parallel branches concatenated along channels."""

    def branches(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.branches(x), 1)


class InceptionA(_Block):
    """35x35 block (Mixed_5b/5c/5d, TF mixed .. mixed_2): 1x1, 5x5, double 3x3 and avg-pool branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))]


class ReductionB(_Block):
    """35x35 -> 17x17 reduction (Mixed_6a, TF mixed_3): strided 3x3, strided double 3x3, max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def branches(self, x: Tensor) -> list[Tensor]:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)]


class InceptionC(_Block):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e, TF mixed_4 .. mixed_7)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        return [self.branch1x1(x), b7, b7dbl, self.branch_pool(_tf_avg_pool(x))]


class ReductionD(_Block):
    """17x17 -> 8x8 reduction (Mixed_7a, TF mixed_8)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def branches(self, x: Tensor) -> list[Tensor]:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return [b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)]


class InceptionE(_Block):
    """8x8 block with split 1x3/3x1 outputs (Mixed_7b, Mixed_7c; TF mixed_9, mixed_10).

    `max_pool=True` is the TF graph's quirk in the last block: its pool branch uses a 3x3 max pool.
    """

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return [self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl), self.branch_pool(pooled)]


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: TF1 bilinear resize to 299, (x - 128) / 128, the 2015-12-05 graph's layers.

    Build it with `gigatok.eval.inception.load_inception`, which loads weights, folds BatchNorm and sets
    channels-last; a bare instance has random weights.

    Args:
        classifier: build the 1008-way `fc` head (needed for "logits"; fid-helper's weights have none).
    """

    def __init__(self, classifier: bool = True):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc: nn.Linear | None = nn.Linear(2048, NUM_CLASSES) if classifier else None
        self.weights_file: str | None = None  # set by load_inception: which weights this network runs
        self.weights_kind: str | None = None

    @property
    def has_classifier(self) -> bool:
        return self.fc is not None

    def fold_batchnorm(self) -> FIDInceptionV3:
        """Fold every BatchNorm into its convolution (inference only; changes the state_dict keys)."""
        for module in self.modules():
            if isinstance(module, BasicConv2d):
                module.fold_batchnorm()
        return self

    def preprocess(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 or float in [0, 255] -> (N, 3, 299, 299) float32 in [-1, 1], channels-last."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception expects images shaped (N, 3, H, W), got {tuple(images.shape)}")
        if not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise ValueError(f"Inception expects uint8 or float images in [0, 255], got dtype {images.dtype}")
        x = resize_bilinear_tf1(images.float(), INPUT_SIZE)
        x = (x - 128) / 128
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Inception features of a batch.

        Args:
            images: (N, 3, H, W) uint8 or float tensor in [0, 255], any H and W.

        Returns:
            "pool": (N, 2048) float32 pool_3 features; "spatial": (N, 2023) float32, the first 7 channels of
            Mixed_6d.branch1x1 (TF mixed_6/conv, after its BatchNorm and ReLU) in NHWC order, flattened;
            "logits": (N, 1008) float32 unbiased logits pool @ fc.weight.T, only when `has_classifier`.
        """
        x = self.preprocess(images)  # (N, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))))
        branches = self.Mixed_6d.branches(x)  # (N, 768, 17, 17) input; branches[0] is mixed_6/conv
        # ADM slices the LAST axis of the NHWC tensor, i.e. channels: (N, 192, 17, 17) -> (N, 17, 17, 7)
        spatial = branches[0][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(x), -1)  # (N, 2023)
        x = self.Mixed_7a(self.Mixed_6e(torch.cat(branches, 1)))  # (N, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (N, 2048, 8, 8)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 2048)
        out = {"pool": pool.float(), "spatial": spatial.float()}
        if self.fc is not None:
            out["logits"] = (pool @ self.fc.weight.T).float()  # (N, 1008); ADM/improved-GAN IS uses no bias
        return out
