"""The CPU's float32 matrix products through oneDNN, behind a probe (the capstone's fast engine, ``ch-capstone``).

PyTorch multiplies float32 matrices on the CPU with MKL, whose kernels are chosen by processor vendor: on AMD
processors it runs its AVX2 code even where AVX-512 is available. oneDNN, which ships inside PyTorch (reached
through ``torch.ops.mkldnn._linear_pointwise``, a private op: the one TorchInductor emits for CPU linear
layers), chooses by instruction set. Same float32 arithmetic either way (float32 products summed in float32;
the order of the sums, hence the last bits, differ). The products :mod:`kltutor.capstone.fast.decoder` runs
without autograd (sampling, the reference's pass, the backward of the recorded-activation functions) go
through :func:`mm_nt` and :func:`mm_tn`, on the backend :func:`cpu_matmul` names.

oneDNN is used only where it computes what torch's own product computes: the op must exist, run and agree
with ``F.linear`` on a small problem (probed once), and float32 products must be exact float32 --
``torch.get_float32_matmul_precision() == "highest"`` (checked at every product: ``"high"`` or ``"medium"``
let oneDNN multiply in bfloat16 or TF32, which torch's CPU product does not). Otherwise, or with
``cpu_matmul("default")``, the products are torch's own (``torch.mm``, ``torch.addmm``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cpu_matmul", "exact_float32", "mm_nt", "mm_tn"]

_MATMUL = {"mode": "auto", "onednn": None}  # onednn: None (not probed yet), or whether it works here


def _probe_onednn() -> bool:
    """oneDNN's linear op exists, runs, and agrees with ``F.linear`` on a small float32 problem."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b, r = (torch.randn(*s, generator=g) for s in ((5, 24), (7, 24), (7,), (5, 7)))
        ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        ok &= torch.allclose(op.binary(x, r, w, None, "add"), r + F.linear(x, w), rtol=1e-5, atol=1e-5)
        ok &= torch.allclose(op(x.t(), w[:5].t(), None, "none", [], ""), x.t() @ w[:5], rtol=1e-5, atol=1e-5)
        return bool(ok)
    except Exception:
        return False


def exact_float32() -> bool:
    """Whether float32 products must be computed in float32 (``torch.set_float32_matmul_precision("highest")``,
    torch's default; and oneDNN's own float32 setting, where this torch has one, not lowered)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn_matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(mkldnn_matmul, "fp32_precision", "none") in ("none", "ieee")


def cpu_matmul(mode: str | None = None) -> str:
    """The backend of the CPU's float32 matrix products here: ``"onednn"`` or ``"default"`` (torch's own,
    MKL). ``mode`` (optional) sets it: ``"auto"`` (oneDNN when the probe passes and :func:`exact_float32`,
    the default), ``"onednn"`` (oneDNN whenever the op works, whatever the precision setting) or
    ``"default"``. Returns the backend in use now."""
    if mode is not None:
        if mode not in ("auto", "onednn", "default"):
            raise ValueError(f"cpu_matmul must be 'auto', 'onednn' or 'default', got {mode!r}")
        _MATMUL["mode"] = mode
    if _MATMUL["mode"] == "default":
        return "default"
    if _MATMUL["onednn"] is None:
        _MATMUL["onednn"] = _probe_onednn()
    if _MATMUL["mode"] == "onednn" and not _MATMUL["onednn"]:
        raise RuntimeError("oneDNN's linear op (torch.ops.mkldnn._linear_pointwise) is not usable with this torch")
    if _MATMUL["mode"] == "auto" and not exact_float32():
        return "default"
    return "onednn" if _MATMUL["onednn"] else "default"


def _onednn(x: Tensor, w: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and _MATMUL["mode"] != "default"
        and cpu_matmul() == "onednn"
    )


def mm_nt(
    x: Tensor, w: Tensor, b: Tensor | None = None, add: Tensor | None = None, out: Tensor | None = None
) -> Tensor:
    """``x @ w.T (+ b) (+ add)`` for 2-D ``x`` ``[N, K]`` and ``w`` ``[F, K]`` (any strides), without autograd,
    through the :func:`cpu_matmul` backend on the CPU; written into ``out`` ``[N, F]`` if given."""
    if _onednn(x, w):
        op = torch.ops.mkldnn._linear_pointwise
        y = op(x, w, b, "none", [], "") if add is None else op.binary(x, add, w, b, "add")
        return y if out is None else out.copy_(y)
    if add is None:
        if b is None:
            return torch.mm(x, w.t(), out=out)
        return torch.addmm(b, x, w.t(), out=out)
    return torch.addmm(add if b is None else add + b, x, w.t(), out=out)


def mm_tn(g: Tensor, x: Tensor) -> Tensor:
    """``g.T @ x`` (contiguous ``[F, D]``) for ``g`` ``[N, F]`` and ``x`` ``[N, D]``, without autograd: a weight's
    gradient. On oneDNN the narrower of the two is the operand copied into row-major order (the other is
    read transposed as it is): ``(x.T @ g).T`` when ``D <= F``."""
    if _onednn(g, x):
        op = torch.ops.mkldnn._linear_pointwise
        if x.shape[1] <= g.shape[1]:
            return op(x.t(), g.t(), None, "none", [], "").t().contiguous()
        return op(g.t(), x.t(), None, "none", [], "")
    return g.t() @ x
