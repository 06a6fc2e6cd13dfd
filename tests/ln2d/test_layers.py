"""LayerNorm2d against independent references, over shapes, eps, dtypes and execution modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ln2d import LayerNorm2d

shapes = st.tuples(st.integers(1, 4), st.integers(1, 48), st.integers(1, 9), st.integers(1, 9))
eps_values = st.sampled_from([1e-12, 1e-6, 1e-5, 1e-3, 0.1])


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """LayerNorm2d's formula in fp64, written independently of the module."""
    x = x.double()
    mean = x.sum(1, keepdim=True) / x.shape[1]
    var = ((x - mean) ** 2).sum(1, keepdim=True) / x.shape[1]
    y = (x - mean) / (var + eps).sqrt()
    return y * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)


def make_norm(channels: int, eps: float, seed: int, affine: bool = True) -> LayerNorm2d:
    norm = LayerNorm2d(channels, eps=eps, affine=affine)
    if affine:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=g)
            norm.bias.uniform_(-0.5, 0.5, generator=g)
    return norm


def fp32_tolerance(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per pixel: fp32 rounding of x is amplified by |x| / sqrt(var + eps) when normalising
    (nearly equal channels, eps 1e-12), so the bound grows with that condition number."""
    x = x.double()
    spread = (x.var(1, unbiased=False, keepdim=True) + eps).sqrt()
    return 4e-6 + 1e-6 * x.abs().amax(1, keepdim=True) / spread


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes, eps=eps_values, seed=st.integers(0, 2**16), scale=st.sampled_from([1e-2, 1, 50])
)
def test_fp32_matches_formula_and_layer_norm(shape, eps, seed, scale):
    # Offset proportional to the spread: fp32's own cancellation error stays below the tolerance.
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) + 0.3) * scale
    norm = make_norm(shape[1], eps, seed)
    y = norm(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    ref = reference(x, norm.weight, norm.bias, eps)
    tolerance = fp32_tolerance(x, eps)
    assert ((y.double() - ref).abs() <= tolerance).all()
    permuted = F.layer_norm(x.permute(0, 2, 3, 1), (shape[1],), norm.weight, norm.bias, eps)
    assert ((y - permuted.permute(0, 3, 1, 2)).abs().double() <= tolerance).all()


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    eps=eps_values,
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
)
def test_low_precision_uses_fp32_statistics(shape, eps, seed, dtype):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 4 + 2).to(dtype)
    norm = make_norm(shape[1], eps, seed).to(dtype)
    y = norm(x)
    assert y.dtype == dtype
    ref = reference(x, norm.weight, norm.bias, eps)
    # One rounding of the output to the storage type: half an ulp of values up to ~sqrt(C) * 1.5.
    tol = {torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(y.double(), ref, atol=tol, rtol=tol)


def test_without_affine_is_pure_standardisation():
    x = torch.randn(2, 7, 3, 5)
    y = LayerNorm2d(7, affine=False)(x)
    assert dict(LayerNorm2d(7, affine=False).named_parameters()) == {}
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(2, 3, 5), atol=1e-4, rtol=0)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_batch_independence(batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 5, 4, generator=g)
    norm = make_norm(16, 1e-6, seed)
    together = norm(x)
    alone = torch.cat([norm(x[i : i + 1]) for i in range(batch)])
    torch.testing.assert_close(together, alone, atol=0, rtol=0)
    # Changing the other samples changes nothing for sample 0.
    other = x.clone()
    other[1:] = torch.randn(batch - 1, 16, 5, 4, generator=g) * 100
    torch.testing.assert_close(norm(other)[0], together[0], atol=0, rtol=0)


def test_gradcheck_fp64():
    norm = make_norm(6, 1e-5, 0).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, w, b: _functional(norm, t, w, b), (x, norm.weight, norm.bias)
    )


def _functional(norm: LayerNorm2d, x, weight, bias):
    return torch.func.functional_call(norm, {"weight": weight, "bias": bias}, (x,))


def test_channels_last_input():
    x = torch.randn(3, 24, 7, 9)
    norm = make_norm(24, 1e-6, 1)
    y = norm(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, norm(x), atol=1e-6, rtol=1e-6)


def test_inference_modes_agree():
    x = torch.randn(2, 8, 4, 4)
    norm = make_norm(8, 1e-6, 2)
    eager = norm(x)
    with torch.no_grad():
        torch.testing.assert_close(norm(x), eager, atol=0, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(norm(x), eager, atol=0, rtol=0)


@pytest.mark.slow
def test_torch_compile():
    norm = make_norm(16, 1e-6, 3)
    compiled = torch.compile(norm, dynamic=True)
    for shape in [(2, 16, 5, 5), (1, 16, 9, 3)]:
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), norm(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((4, 8, 8), "expects \\(N, C, H, W\\)"), ((1, 5, 2, 2), "built for 8 channels, got .* 5")],
)
def test_clear_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        LayerNorm2d(8)(torch.randn(shape))


def test_parameter_names_load_timm_style_state_dict():
    state = {"weight": torch.rand(12), "bias": torch.rand(12)}
    norm = LayerNorm2d(12)
    norm.load_state_dict(state)
    assert torch.equal(norm.weight, state["weight"]) and torch.equal(norm.bias, state["bias"])
