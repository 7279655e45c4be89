"""Every single-tensor op on each gradient of a ResNet-50-shaped model (161
tensors of many shapes and sizes), against hvdkit.kernels.torch_reference."""
import pytest
import torch

from hvdkit.kernels import torch_ops as ops
from hvdkit.kernels import torch_reference as ref
from test_ops_support import DEVICES, assert_bitwise_equal, resnet_tensors


@pytest.mark.parametrize("device", DEVICES)
def test_each_op_on_each_resnet_gradient(device):
    tensors = resnet_tensors(device, width_divisor=16)
    assert len(tensors) >= 150
    for i, x in enumerate(tensors):
        residual = torch.full_like(x, 0.01)
        q, scales = ops.quantize_int8(x, 64, stochastic=True, seed=i)
        expected_q, expected_scales = ref.quantize_int8(x, 64, stochastic=True, seed=i)
        assert_bitwise_equal(q, expected_q)
        assert_bitwise_equal(scales, expected_scales)

        bits, _ = ops.sign_ef(x, residual.clone(), 64)
        assert_bitwise_equal(bits, ref.sign_ef(x, residual.clone(), 64)[0])

        k = max(1, x.numel() // 100)
        kept = residual.clone()
        indices, values = ops.topk_ef(x, kept, k)
        expected_values = ref.topk_ef(x, residual.clone(), k)[1]
        assert_bitwise_equal(values.abs().sort().values, expected_values.abs().sort().values)
        assert_bitwise_equal(kept.view(-1)[indices.long()], torch.zeros_like(values))

        assert_bitwise_equal(ops.randomk(x, k, seed=i)[0], ref.randomk(x, k, seed=i)[0])
