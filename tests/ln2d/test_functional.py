"""layer_norm_2d, every way it runs (ln2d's C kernel for NCHW, F.layer_norm for channels_last),
against float64 references written here, against PyTorch's own layer norm, and in every place a
layer must work: autograd, autocast, torch.compile, tracing, inference mode, DDP, timm weights."""

from __future__ import annotations

import contextlib
import copy
import random
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ln2d import LayerNorm2d, functional
from ln2d.export.bench_train import saved_bytes
from ln2d.functional import layer_norm_2d, layer_norm_2d_formula, native_applies
from tests.third_party import install_torchvision_placeholder

LAYOUTS = {
    "nchw": torch.contiguous_format,
    "channels_last": torch.channels_last,
}
needs_native = pytest.mark.skipif(
    not native_applies(torch.empty(1, 1, 1, 1)),
    reason="this install has no eager kernel (built without a C compiler)",
)


def reference(x, weight, bias, eps):
    """The seed's math in float64, written independently of ln2d: mean and biased variance
    over C by sums, the affine per channel."""
    x = x.double()
    c = x.shape[1]
    mean = x.sum(1, keepdim=True) / c
    var = ((x - mean) ** 2).sum(1, keepdim=True) / c
    y = (x - mean) / (var + eps).sqrt()
    if weight is not None:
        y = y * weight.double().view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.double().view(1, -1, 1, 1)
    return y


def forward_and_grads(function, x, weight, bias, dy):
    """Output and the gradients of x, weight and bias for upstream gradient dy."""
    x = x.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in (weight, bias)]
    y = function(x, *params)
    grads = torch.autograd.grad(y, [x, *params], dy)
    return [y.detach(), *grads]


def inputs(shape, seed, offset=0.0, layout="nchw", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) + offset).to(dtype)
    weight = torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5, generator=g).float()
    bias = torch.empty(c, dtype=torch.float64).uniform_(-0.5, 0.5, generator=g).float()
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    fmt = LAYOUTS[layout]
    return x.contiguous(memory_format=fmt), weight, bias, dy.contiguous(memory_format=fmt)


def pytorch_layer_norm(x, weight, bias, eps=1e-6):
    """PyTorch's own layer norm over C (the permute costs a copy, not accuracy)."""
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], weight, bias, eps).permute(0, 3, 1, 2)


QUANTITIES = ("y", "dx", "dweight", "dbias")


@pytest.mark.cpu_numerics
@needs_native
@pytest.mark.parametrize("offset", [0.0, 3.0, 300.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_as_close_to_float64_as_pytorchs_layer_norm(native_level, layout, dtype, offset):
    """Over 40 random shapes, summed: the output and every gradient at least as close to the
    float64 truth as PyTorch's F.layer_norm (which channels_last fp32 *is*); per shape, never
    more than twice as far, give or take one rounding of the largest value."""
    rng = random.Random(offset)
    ours_total, theirs_total = dict.fromkeys(QUANTITIES, 0.0), dict.fromkeys(QUANTITIES, 0.0)
    for seed in range(40):
        shape = (rng.randint(1, 3), rng.randint(1, 300), rng.randint(1, 12), rng.randint(1, 12))
        x, weight, bias, dy = inputs(shape, seed, offset, layout, dtype)
        ours = forward_and_grads(lambda *a: layer_norm_2d(*a, 1e-6), x, weight, bias, dy)
        theirs = forward_and_grads(pytorch_layer_norm, x, weight, bias, dy)
        exact = forward_and_grads(
            lambda *a: reference(*a, 1e-6), x.double(), weight.double(), bias.double(), dy.double()
        )
        for name, mine, pytorchs, truth in zip(QUANTITIES, ours, theirs, exact, strict=True):
            assert mine.dtype == pytorchs.dtype
            error = (mine.double() - truth).abs().max().item()
            pytorch_error = (pytorchs.double() - truth).abs().max().item()
            slack = 2 * torch.finfo(mine.dtype).eps * truth.abs().max().item()
            assert error <= 2 * pytorch_error + slack, (name, shape, error, pytorch_error)
            ours_total[name] += error
            theirs_total[name] += pytorch_error
    for name in QUANTITIES:
        assert ours_total[name] <= theirs_total[name], (name, ours_total, theirs_total)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_in_double(layout, affine):
    x, weight, bias, _ = inputs((2, 5, 3, 4), seed=1, layout=layout, dtype=torch.float64)
    params = (weight.double(), bias.double()) if affine else (None, None)
    args = [x.requires_grad_()] + [p.requires_grad_() if p is not None else None for p in params]
    assert torch.autograd.gradcheck(lambda *a: layer_norm_2d(*a, 1e-5), args)


@pytest.mark.cpu_numerics
@needs_native  # PyTorch's path sums dbias in the storage type's precision
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_fp32_statistics(native_level, layout, dtype):
    # An offset of 64 with unit spread: fp16 / bf16 arithmetic for the statistics would lose
    # the deviations entirely (bf16 has 8 bits of mantissa).
    x, weight, bias, dy = inputs((2, 64, 5, 7), seed=2, offset=64.0, layout=layout, dtype=dtype)
    y, dx, dweight, dbias = forward_and_grads(
        lambda *a: layer_norm_2d(*a, 1e-6), x, weight, bias, dy
    )
    assert y.dtype == dx.dtype == dtype and dweight.dtype == dbias.dtype == torch.float32
    y_ref, dx_ref, dweight_ref, dbias_ref = forward_and_grads(
        lambda *a: reference(*a, 1e-6), x.double(), weight.double(), bias.double(), dy.double()
    )
    step = torch.finfo(dtype).eps  # one rounding of a value near 1 to the storage type
    torch.testing.assert_close(y.double(), y_ref, atol=3 * step, rtol=step)
    # dx: the statistics are those of the stored x; dy is stored too, rounding once more.
    torch.testing.assert_close(dx.double(), dx_ref, atol=8 * step, rtol=4 * step)
    torch.testing.assert_close(dbias.double(), dbias_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(dweight.double(), dweight_ref, atol=70 * 8 * step, rtol=4 * step)


def test_autocast_keeps_the_inputs_dtype_and_fp32_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), LayerNorm2d(32))
    x = torch.randn(2, 3, 9, 9) + 20
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = net[0](x)
        y = net(x)
    assert features.dtype == y.dtype == torch.bfloat16
    norm = net[1]
    expected = reference(features, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y.double(), expected, atol=0.02, rtol=0.01)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_nan_and_inf_behave_as_pytorchs_layer_norm(layout):
    x, weight, bias, _ = inputs((2, 6, 4, 5), seed=3, layout=layout)
    x[0, 2, 1, 1] = float("nan")
    x[1, 0, 2, 3] = float("inf")
    x[1, 4, 0, 0] = -float("inf")
    ours = layer_norm_2d(x, weight, bias, 1e-6)
    theirs = pytorch_layer_norm(x, weight, bias)
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert ours.isnan().sum() == 3 * 6  # the three non-finite pixels, every channel
    torch.testing.assert_close(ours[~ours.isnan()], theirs[~theirs.isnan()])


@needs_native  # PyTorch's path squares in fp32 and answers NaN
def test_a_huge_finite_value_is_normalised_not_overflowed():
    # 3e38 squared overflows fp32: PyTorch's CPU layer norm answers NaN for that pixel. The
    # statistics here are summed in double, so the pixel is normalised like any other.
    x, weight, bias, _ = inputs((1, 6, 2, 2), seed=3)
    x[0, 1, 1, 1] = 3e38
    y = layer_norm_2d(x, weight, bias, 1e-6)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), reference(x, weight, bias, 1e-6), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_differentiating_twice_raises_one_clear_error(layout):
    x, weight, bias, _ = inputs((1, 4, 3, 3), seed=4, layout=layout)
    x.requires_grad_()
    y = layer_norm_2d(x, weight, bias, 1e-6)
    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.sum().backward()


def test_an_in_place_op_after_the_norm_is_allowed_and_right():
    # ReLU(inplace=True) follows every norm in SimpleLN_CNN; F.layer_norm's permuted result
    # is a view, which autograd handles by copying whole gradients.
    x, weight, bias, dy = inputs((2, 6, 4, 5), seed=5, layout="channels_last")
    assert not layer_norm_2d(x, weight.requires_grad_(), bias, 1e-6)._is_view()
    ours = forward_and_grads(lambda *a: torch.relu_(layer_norm_2d(*a, 1e-6)), x, weight, bias, dy)
    theirs = forward_and_grads(lambda *a: pytorch_layer_norm(*a).relu(), x, weight, bias, dy)
    for mine, pytorchs in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, pytorchs)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_the_input_and_two_numbers_per_pixel_for_backward(layout, dtype):
    norm = LayerNorm2d(96)
    x = torch.randn(4, 96, 14, 14).to(dtype).contiguous(memory_format=LAYOUTS[layout])
    x.requires_grad_()
    pixel_stats = 2 * 4 * 14 * 14 * 4  # mean and rstd in fp32
    parameters = 2 * 96 * 4
    input_bytes = x.numel() * x.element_size()
    saved = saved_bytes(layer_norm_2d, x, [norm.weight, norm.bias, norm.eps])
    assert saved <= input_bytes + pixel_stats + parameters
    # The formula written out keeps three tensors of the input's size (in fp32).
    formula = saved_bytes(layer_norm_2d_formula, x, [norm.weight, norm.bias, norm.eps])
    assert formula >= 2.9 * x.numel() * 4


@needs_native
def test_thread_count_changes_no_output_bit():
    x, weight, bias, dy = inputs((4, 64, 32, 32), seed=5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            norm = forward_and_grads(lambda *a: layer_norm_2d(*a, 1e-6), x, weight, bias, dy)
            results.append(norm)
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0]) and torch.equal(results[0][1], other[1])
        # The parameters' gradients are summed per thread, then in double: close, not equal.
        torch.testing.assert_close(results[0][2], other[2], atol=1e-4, rtol=1e-6)


def test_inference_mode_matches_and_records_nothing():
    norm = LayerNorm2d(16)
    x, *_ = inputs((2, 16, 5, 5), seed=6)
    expected = norm(x).detach()
    with torch.inference_mode():
        y = norm(x)
    assert y.is_inference() and y.grad_fn is None
    assert torch.equal(y, expected)


@pytest.mark.integration
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_torch_compile_fullgraph_matches_eager(layout):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), LayerNorm2d(24), nn.ReLU())
    x = torch.randn(2, 3, 10, 10).contiguous(memory_format=LAYOUTS[layout])
    compiled = torch.compile(net, fullgraph=True)  # a graph break would raise
    eager_out = net(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    compiled_out = compiled(x)
    compiled_out.sum().backward()
    torch.testing.assert_close(compiled_out, eager_out, atol=1e-5, rtol=1e-5)
    for grad, expected in zip([p.grad for p in net.parameters()], eager_grads, strict=True):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)


def test_jit_trace_records_the_formula():
    norm = LayerNorm2d(8)
    x, *_ = inputs((1, 8, 4, 4), seed=7)
    traced = torch.jit.trace(norm, x)
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert "aten::mean" in kinds and not any(k.startswith("prim::PythonOp") for k in kinds)
    other, *_ = inputs((3, 8, 6, 2), seed=8)
    torch.testing.assert_close(traced(other), norm(other))


def test_takes_over_a_timm_convnext_checkpoint():
    install_torchvision_placeholder()
    from timm.layers import LayerNorm2d as TimmLayerNorm2d
    from timm.models.convnext import ConvNeXt

    torch.manual_seed(0)
    theirs = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5, conv_mlp=True)
    theirs.eval()
    with torch.no_grad():
        for module in theirs.modules():
            if isinstance(module, TimmLayerNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    ours = copy.deepcopy(theirs)
    swapped = 0
    for parent in list(ours.modules()):
        for name, child in parent.named_children():
            if isinstance(child, TimmLayerNorm2d):
                layer = LayerNorm2d(child.normalized_shape[0], eps=child.eps)
                setattr(parent, name, layer)
                swapped += 1
    # The whole checkpoint loads strictly: ln2d's layer has timm's parameter names.
    ours.load_state_dict(theirs.state_dict())
    assert swapped >= 3
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_distributed_data_parallel_gets_the_same_gradients():
    import torch.distributed as dist

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), LayerNorm2d(16), nn.ReLU(), nn.Conv2d(16, 2, 1))
    x = torch.randn(4, 3, 9, 9)
    net(x).square().mean().backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        ddp(x).square().mean().backward()  # the reducer's hooks fire on every parameter
        # The reducer holds the process group: freed after the group is destroyed, its
        # destructor can wait forever on the group's threads (it hung a CI run once).
        del ddp
    finally:
        dist.destroy_process_group()
    for p, grad in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, grad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA torch")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cuda_matches_a_float64_reference(layout, dtype):
    # Against float64, not against the CPU: where ln2d's C kernel is not built, the CPU runs
    # PyTorch's own bf16 layer norm, whose weight and bias gradients are off by 2-4 %.
    x, weight, bias, dy = inputs((4, 96, 14, 14), seed=10, offset=3.0, layout=layout, dtype=dtype)
    wanted = forward_and_grads(
        lambda *a: layer_norm_2d(*a, 1e-6), x.double(), weight.double(), bias.double(), dy.double()
    )
    cuda = forward_and_grads(
        lambda *a: layer_norm_2d(*a, 1e-6), x.cuda(), weight.cuda(), bias.cuda(), dy.cuda()
    )
    # bf16 keeps 8 significant bits: 2^-7 of the largest value is two roundings' worth
    relative = 1e-5 if dtype == torch.float32 else 2**-7
    for on_gpu, want in zip(cuda, wanted, strict=True):
        tolerance = relative * want.abs().max().item()
        torch.testing.assert_close(on_gpu.cpu().double(), want, atol=tolerance, rtol=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_without_the_kernel_pytorchs_kernels_take_every_layout(monkeypatch, layout, dtype):
    # An install built without a C compiler (and CUDA, for NCHW) takes PyTorch's layer norm.
    monkeypatch.setattr(functional, "native_applies", lambda x: False)
    x, weight, bias, dy = inputs((2, 7, 3, 5), seed=11, offset=2.0, layout=layout, dtype=dtype)
    params = (weight.to(dtype), bias.to(dtype)) if dtype == torch.float64 else (weight, bias)
    ours = forward_and_grads(lambda *a: layer_norm_2d(*a, 1e-6), x, *params, dy)
    exact = forward_and_grads(
        lambda *a: reference(*a, 1e-6), x.double(), *(p.double() for p in params), dy.double()
    )
    tolerance = 1e-10 if dtype == torch.float64 else 0.1
    for got, truth in zip(ours, exact, strict=True):
        torch.testing.assert_close(got.double(), truth, atol=tolerance, rtol=tolerance)
    if dtype == torch.float64:
        args = [x.detach().requires_grad_(), *(p.detach().requires_grad_() for p in params)]
        assert torch.autograd.gradcheck(lambda *a: layer_norm_2d(*a, 1e-5), args)
