"""Tiny insightface pack: five ONNX files shaped like buffalo_l's, exported from small torch modules.

This module's one job is :func:`save_tiny_insightface`: a constant SCRFD-shaped detector that
always finds one face, and small conv heads standing in for the landmark, gender/age and
recognition networks, exported with the file names, input/output names and shapes that
``insightface.app.FaceAnalysis`` routes by.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import ID_EMBED_DIM, SEED, _seeded

# Input/output signatures of the buffalo_l pack's ONNX files (read from the files' graphs):
#   det_10g.onnx     input "input.1" [1, 3, ?, ?] (ours: fixed 640 x 640); 9 outputs: scores [N_s, 1] x3 (strides 8, 16, 32,
#                    2 anchors per cell), boxes [N_s, 4] x3 (distances in stride units), kps [N_s, 10] x3
#   2d106det.onnx    input "data" [1, 3, 192, 192] -> "fc1" [1, 212]   (106 x (x, y) in [-1, 1])
#   1k3d68.onnx      input "data" [1, 3, 192, 192] -> "fc1" [1, 3309]  (last 68 x 3 used)
#   genderage.onnx   input "data" [1, 3, 96, 96]   -> "fc1" [1, 3]
#   w600k_r50.onnx   input "input.1" [1, 3, 112, 112] -> "683" [1, 512]
# insightface routes a file by these shapes alone (model_zoo.ModelRouter) and reads outputs by
# position, so ours are routed exactly like the real ones. (The real graphs name some outputs
# with bare numbers, e.g. "683"; torch's exporter refuses those names, so ours are spelled out.)

INSIGHTFACE_PACK_FILES = ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx")


class _TinyDetector(torch.nn.Module):
    """SCRFD-shaped detector: for every stride s in (8, 16, 32) and 2 anchors per cell, a score,
    4 box distances and 10 keypoint offsets (in units of s).

    Random weights would find random faces, so the heads are *constant*: a per-pixel
    convolution of the input whose weights are zero, plus biases. The score bias peaks at one
    anchor (stride 32, cell (1, 1) = pixel (32, 32) of the detector input), which therefore
    reports one face whatever the image: box (0, 0)-(64, 64) of the 640 input, 5 keypoints
    placed like a frontal face's. The other anchors score ~0. This exercises insightface's real
    decoding path (anchors, distance2bbox, NMS, rescaling to the photo) deterministically.
    """

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        # box distances (left, top, right, bottom) and keypoint offsets (x, y) x 5 of the face
        self.register_buffer("face_box", torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
        self.register_buffer("face_kps", torch.tensor([[-0.3, -0.2, 0.3, -0.2, 0.0, 0.1, -0.25, 0.4, 0.25, 0.4]]))

    def forward(self, x):  # [1, 3, H, W]
        h = self.stem(x) * 0.0  # [1, 4, H, W], zero but graph-dependent on the input
        scores, boxes, kpss = [], [], []
        for stride in (8, 16, 32):
            f = torch.nn.functional.avg_pool2d(h, stride)  # [1, 4, H/s, W/s]
            n = f.shape[2] * f.shape[3] * 2
            base = f.mean(dim=1).reshape(-1, 1).repeat(1, 2).reshape(n, 1)  # [n, 1] zeros
            score = base + 0.01
            box = base + torch.full((1, 4), 0.5)
            kps = base + torch.zeros((1, 10))
            if stride == 32:
                # anchor of cell (row 1, col 1), first of its 2 anchors
                w_cells = f.shape[3]
                idx = (1 * w_cells + 1) * 2
                onehot = torch.zeros((n, 1))
                onehot[idx] = 1.0
                score = score + 0.98 * onehot
                box = box + onehot * self.face_box  # distances 1 stride: box (0, 0)-(64, 64)
                kps = kps + onehot * self.face_kps  # eyes, nose, mouth corners
            scores.append(score)
            boxes.append(box)
            kpss.append(kps)
        return (*scores, *boxes, *kpss)


class _TinyConvHead(torch.nn.Module):
    """Conv -> global pool -> Linear: a stand-in for a landmark/attribute/recognition net."""

    def __init__(self, n_out: int, width: int = 8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, stride=4, padding=1)
        self.fc = torch.nn.Linear(width, n_out)

    def forward(self, x):
        f = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return torch.tanh(self.fc(f))


def _export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: list[str],
    dynamic_hw: bool = False,
) -> None:
    axes = {input_name: {2: "height", 3: "width"}} if dynamic_hw else None
    import warnings

    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=13,
            dynamo=False,
        )


def save_tiny_insightface(root: Path, pack: str = "buffalo_l", *, seed: int = SEED + 60) -> Path:
    """A tiny insightface model pack at ``root/models/<pack>/`` (the layout ``FaceAnalysis``
    reads); returns ``root``.

    Five ONNX files, exported here with ``torch.onnx.export``, with the same file names,
    input/output names and shapes as the buffalo_l pack (see the table above), so
    ``insightface.app.FaceAnalysis`` routes and runs them through its real code: detection
    (constant, see :class:`_TinyDetector`), 106-point 2D and 68-point 3D landmarks, gender/age and
    the 512-d recognition embedding (random weights: a deterministic function of the aligned crop).
    """
    folder = Path(root) / "models" / pack
    folder.mkdir(parents=True, exist_ok=True)
    _seeded(seed)
    _export_onnx(
        _TinyDetector(),
        torch.zeros(1, 3, 640, 640),
        folder / "det_10g.onnx",
        "input.1",
        [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)],
    )
    _export_onnx(_TinyConvHead(212), torch.zeros(1, 3, 192, 192), folder / "2d106det.onnx", "data", ["fc1"])
    _export_onnx(_TinyConvHead(3309), torch.zeros(1, 3, 192, 192), folder / "1k3d68.onnx", "data", ["fc1"])
    _export_onnx(_TinyConvHead(3), torch.zeros(1, 3, 96, 96), folder / "genderage.onnx", "data", ["fc1"])
    _export_onnx(
        _TinyConvHead(ID_EMBED_DIM, width=16),
        torch.zeros(1, 3, 112, 112),
        folder / "w600k_r50.onnx",
        "input.1",
        ["embedding"],
    )
    return Path(root)
