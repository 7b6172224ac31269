"""The protocol switches against hand-worked cases: faulty biases, raw inputs, integer arithmetic,
re-estimated decode, the learnable scale, presets and their validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from mcel_search.core.biterrors import inject_bit_errors, stored_tensors
from mcel_search.core.data import load_dataset
from mcel_search.core.errors import BadInputError
from mcel_search.core.experiment import TrialSpec, build, checkpoint_meta
from mcel_search.core.layers import LogitScale, QuantConv2d, QuantLinear
from mcel_search.core.models import create_model
from mcel_search.core.protocol import (
    DEFAULT,
    PAPER,
    PAPER_TRAIN,
    Protocol,
    evaluation_protocol,
    make_protocol,
    parse_protocol,
    protocol_from_dict,
)
from mcel_search.core.quantization import QuantizedTensor, dequantize, quantize, reestimate
from mcel_search.core.training import TrainConfig

PAPER_STRUCTURE = dict(
    conv_bias="faulty",
    linear_bias="faulty",
    output_bias="faulty",
    arithmetic="integer",
    output_scale="learnable",
    output_scale_init=1e-5,
)


# ------------------------------------------------------------------------------------------ faulty biases


def _conv_with_bias(bias: list[float], integer: bool = False) -> QuantConv2d:
    conv = QuantConv2d(1, len(bias), 1, bias=True, bits=4, integer=integer, bias_storage="faulty")
    with torch.no_grad():
        conv.weight.fill_(0.0)
        conv.weight[:, 0, 0, 0] = torch.linspace(-1, 1, len(bias))
        conv.bias.copy_(torch.tensor(bias))
    return conv


def test_a_flipped_bias_bit_shifts_its_whole_channel_by_two_to_the_bit_times_the_step() -> None:
    # bias [0, 1.5] at 4 bits: min 0, step 1.5 / 15 = 0.1; channel 0 holds code 0
    conv = _conv_with_bias([0.0, 1.5])
    x = torch.rand(2, 1, 5, 5)
    clean = conv(x)
    qt = conv.quantized_bias()
    assert qt.codes.tolist() == [0, 15]
    flipped = qt.codes.clone()
    flipped[0] ^= 1 << 3  # bit 3 of channel 0: code 0 -> 8
    conv.substitute_bias_codes(qt.with_codes(flipped))
    shifted = conv(x)
    conv.clear_substitute()
    torch.testing.assert_close(shifted[:, 0] - clean[:, 0], torch.full_like(clean[:, 0], 8 * 0.1))
    torch.testing.assert_close(shifted[:, 1], clean[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(conv(x), clean, rtol=0, atol=0)  # restored exactly


def test_under_integer_arithmetic_a_bias_flip_shifts_the_channel_by_an_integer() -> None:
    # the engine at BER 1 flips every bit: code c -> 15 - c, signed c - 8 -> 7 - c: shift 15 - 2c
    conv = _conv_with_bias([0.0, 0.5, 1.5], integer=True)
    model = torch.nn.Sequential(conv)
    x = torch.rand(1, 1, 3, 3)
    clean = model(x)
    codes = conv.quantized_bias().codes.tolist()
    assert codes == [0, 5, 15]  # step 0.1
    with inject_bit_errors(model, 1.0, seed=0, only={"0.bias"}) as flips:
        out = model(x)
    assert flips == {"0.bias": 3 * 4}
    for ch, c in enumerate(codes):
        torch.testing.assert_close(out[0, ch] - clean[0, ch], torch.full_like(clean[0, ch], 15.0 - 2 * c))


def test_faulty_biases_are_exposed_and_seeded_apart_from_the_weights() -> None:
    torch.manual_seed(0)
    plain = create_model("small_cnn", bits=4, in_channels=1, image_size=8)
    torch.manual_seed(0)
    faulty = create_model(
        "small_cnn",
        bits=4,
        in_channels=1,
        image_size=8,
        conv_bias="faulty",
        linear_bias="faulty",
        output_bias="faulty",
    )
    names = [t.name for t in stored_tensors(faulty)]
    assert names == [
        "features.0.0.weight",
        "features.0.0.bias",
        "features.1.0.weight",
        "features.1.0.bias",
        "head.1.0.weight",
        "head.1.0.bias",
        "head.2.weight",
        "head.2.bias",
    ]
    assert [t.name for t in stored_tensors(plain)] == [n for n in names if n.endswith("weight")]
    # the same initial weights (biases are drawn after every weight) get the same flips with or without
    # faulty biases: adding biases to the faulty memory leaves the weights' realization unchanged
    faulty_params = dict(faulty.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p, faulty_params[name], rtol=0, atol=0)

    def used_codes(model):
        out = {}
        with inject_bit_errors(model, 0.05, seed=3) as flips:
            for t in stored_tensors(model):
                if t.kind == "weight":
                    out[t.name] = t.layer._substitute.codes.clone()
        return out, flips

    a, fa = used_codes(plain)
    b, fb = used_codes(faulty)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert set(fb) - set(fa) == {n for n in names if n.endswith("bias")}


def test_a_biased_tensor_flip_rate_is_within_four_sigma_of_p() -> None:
    layer = QuantLinear(64, 4096, bias=True, bits=4, bias_storage="faulty")
    model = torch.nn.Sequential(layer)
    n = 4096 * 4
    p = 0.05
    with inject_bit_errors(model, p, seed=11, only={"0.bias"}) as flips:
        pass
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(flips["0.bias"] - n * p) < 4 * sigma


def test_only_refuses_a_tensor_the_model_does_not_store() -> None:
    model = create_model("small_cnn", bits=4, image_size=8)
    with (
        pytest.raises(BadInputError, match=r"features.0.0.bias"),
        inject_bit_errors(model, 0.1, 0, only={"features.0.0.bias"}),
    ):
        pass


# ------------------------------------------------------------------------------------------- raw inputs


def test_raw_inputs_are_the_pixels_over_16_in_0_1_and_standardized_is_unchanged() -> None:
    raw = load_dataset("digits", inputs="raw")
    std = load_dataset("digits")
    x = torch.cat([raw.train.tensors[0], raw.test.tensors[0]])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert raw.mean == (0.0,) and raw.std == (1.0,)
    # the same images, independently: sklearn's pixels / 16 (as a multiset: the split is ours)
    pixels = np.sort(load_digits().images.reshape(-1) / 16.0)
    np.testing.assert_allclose(np.sort(x.numpy().reshape(-1)), pixels.astype(np.float32), rtol=0, atol=0)
    torch.testing.assert_close(
        std.train.tensors[0], (raw.train.tensors[0] - std.mean[0]) / std.std[0], rtol=1e-5, atol=1e-5
    )
    assert raw.extra["inputs"] == "raw" and std.extra["inputs"] == "standardized"
    with pytest.raises(BadInputError, match="inputs='scaled'"):
        load_dataset("digits", inputs="scaled")


# ---------------------------------------------------------------------------------------- integer codes


def test_integer_forward_equals_signed_code_arithmetic() -> None:
    torch.manual_seed(1)
    layer = QuantLinear(7, 3, bias=False, bits=4, integer=True)
    x = torch.randn(5, 7)
    w = layer.weight.detach()
    step = (w.max() - w.min()) / 15
    q = torch.round((w - w.min()) / step)  # by hand: eq. 11's code
    expected = F.linear(x, q - 8)  # the reference's q - 2**(n-1)
    torch.testing.assert_close(layer(x), expected)
    # affine arithmetic is the same codes times the step plus min: an affine change of the output
    affine = QuantLinear(7, 3, bias=False, bits=4)
    affine.weight = layer.weight
    torch.testing.assert_close(affine(x), F.linear(x, q * step + w.min()))
    # the straight-through gradient is the identity in both
    layer.weight.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, x.sum(0).expand(3, 7))


def test_integer_quantized_tensor_decodes_codes_minus_half_range() -> None:
    w = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    qt = quantize(w, 3, integer=True)
    assert qt.codes.tolist() == [0, 2, 4, 7]  # step 3 / 7; round(1 / (3/7)) = 2, round(1.5 / (3/7)) = 4
    assert dequantize(qt).tolist() == [-4.0, -2.0, 0.0, 3.0]
    binary = quantize(w, 1, integer=True)
    assert dequantize(binary).tolist() == [-1.0, 1.0, 1.0, 1.0]


# -------------------------------------------------------------------------------------- re-estimated decode


def test_reestimated_decode_maps_the_corrupted_code_range_onto_the_clean_value_range() -> None:
    clean = QuantizedTensor(
        codes=torch.tensor([0, 15, 5], dtype=torch.uint8),
        scale=torch.tensor(0.1),
        offset=torch.tensor(-0.5),
        bits=4,
    )
    same = reestimate(clean, torch.tensor([15, 0, 9], dtype=torch.uint8))  # range unchanged: clean decode
    torch.testing.assert_close(dequantize(same), torch.tensor([1.0, -0.5, 0.4]))
    shrunk = reestimate(clean, torch.tensor([1, 14, 5], dtype=torch.uint8))  # [1, 14] -> [-0.5, 1.0]
    torch.testing.assert_close(dequantize(shrunk), torch.tensor([-0.5, 1.0, -0.5 + 4 * 1.5 / 13]))
    flat = reestimate(clean, torch.tensor([6, 6, 6], dtype=torch.uint8))  # constant: clean step from lo
    torch.testing.assert_close(dequantize(flat), torch.tensor([-0.5, -0.5, -0.5]))


def test_the_decode_switch_reaches_the_engine() -> None:
    torch.manual_seed(2)
    model = torch.nn.Sequential(QuantLinear(3, 2, bias=False, bits=2))  # 6 codes: ranges shrink often
    x = torch.randn(4, 3)
    diffs = 0
    for seed in range(20):
        with inject_bit_errors(model, 0.3, seed) as _:
            a = model(x)
            codes = model[0]._substitute.codes
        with inject_bit_errors(model, 0.3, seed, decode="reestimated"):
            b = model(x)
            expected = dequantize(reestimate(model[0].quantized_weight(), codes))
            torch.testing.assert_close(model[0].effective_weight(), expected)
        diffs += not torch.equal(a, b)
    assert diffs > 0
    with (
        pytest.raises(BadInputError, match="decode='fresh'"),
        inject_bit_errors(model, 0.1, 0, decode="fresh"),
    ):
        pass


# ------------------------------------------------------------------------------------------ output scale


def test_the_learnable_scale_is_a_trained_parameter_with_the_constant_scales_state_key() -> None:
    scale = LogitScale(1e-5, learnable=True)
    assert isinstance(scale.scale, torch.nn.Parameter) and float(scale.scale.detach()) == pytest.approx(1e-5)
    assert list(scale.state_dict()) == list(LogitScale(2.0).state_dict()) == ["scale"]
    model = create_model("small_cnn", bits=4, image_size=8, **PAPER_STRUCTURE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = float(model.logit_scale.scale.detach())
    F.cross_entropy(model(torch.rand(8, 1, 8, 8)), torch.arange(8) % 10).backward()
    opt.step()
    assert float(model.logit_scale.scale.detach()) != before
    with pytest.raises(BadInputError, match="init 0"):
        LogitScale(0, learnable=True)


# --------------------------------------------------------------------------------- presets and validation


def test_presets_and_their_labels_round_trip() -> None:
    assert Protocol() == DEFAULT and DEFAULT.label == "default" and not DEFAULT.faulty_biases
    assert PAPER.label == "paper" and PAPER.faulty_biases and PAPER.train_defaults() == PAPER_TRAIN
    assert PAPER_TRAIN == {"lr": 1e-4, "batch_size": 256, "step_size": 5, "gamma": 0.5, "epochs": 10}
    for p in (DEFAULT, PAPER, make_protocol("paper", decode="clean"), make_protocol("default", inputs="raw")):
        assert parse_protocol(p.label) == p
        assert protocol_from_dict(p.to_dict()) == p
    assert make_protocol("paper", output_scale="constant").output_scale_init is None
    assert protocol_from_dict(None) == DEFAULT


def test_bad_switches_name_every_field() -> None:
    with pytest.raises(BadInputError) as exc:
        Protocol(inputs="scaled", conv_bias="yes", decode="fresh", output_scale_init=0.5)
    msg = str(exc.value)
    for part in ("inputs='scaled'", "conv_bias='yes'", "decode='fresh'", "output_scale_init=0.5"):
        assert part in msg
    with pytest.raises(BadInputError, match="expected switch=value"):
        parse_protocol("paper+decode")
    with pytest.raises(BadInputError, match="unknown switch"):
        parse_protocol("paper+bias=faulty")
    with pytest.raises(BadInputError, match="preset 'papr'"):
        parse_protocol("papr")


def test_float_models_refuse_codes_they_do_not_have() -> None:
    with pytest.raises(BadInputError, match="faulty biases need a quantized model"):
        create_model("small_cnn", bits=32, image_size=8, conv_bias="faulty")
    with pytest.raises(BadInputError, match="integer"):
        create_model("small_cnn", bits=32, image_size=8, arithmetic="integer")


def test_evaluating_under_another_protocol_needs_the_flag_and_keeps_the_structure() -> None:
    assert evaluation_protocol(PAPER, None, False) == PAPER
    other = make_protocol("paper", decode="clean")
    with pytest.raises(BadInputError, match="needs --cross-protocol"):
        evaluation_protocol(PAPER, other, False)
    assert evaluation_protocol(PAPER, other, True) == other
    with pytest.raises(BadInputError, match=r"conv_bias \('faulty' in the checkpoint, 'absent' asked\)"):
        evaluation_protocol(PAPER, DEFAULT, True)


def test_a_trial_spec_builds_the_protocols_model_and_data_and_records_it() -> None:
    spec = TrialSpec(
        arch="small_cnn",
        dataset="digits",
        loss="cel",
        protocol=PAPER,
        train=TrainConfig(epochs=1, device="cpu"),
    )
    model, _, data = build(spec)
    assert float(data.train.tensors[0].min()) == 0.0  # raw inputs
    assert len(stored_tensors(model)) == 8 and model.logit_scale.learnable
    meta = checkpoint_meta(spec, data)
    assert meta["protocol"] == PAPER.to_dict()
    rebuilt = create_model(**{k: v for k, v in meta["model"].items()})
    assert rebuilt.mcel_config == model.mcel_config
    assert TrialSpec.from_dict(spec.to_dict()) == spec
    # the default protocol's model and checkpoint entry are what they were before protocols existed
    plain, _, _ = build(TrialSpec(arch="small_cnn", dataset="digits", loss="cel"))
    assert set(plain.mcel_config) == {
        "name",
        "bits",
        "num_classes",
        "in_channels",
        "image_size",
        "logit_scale",
    }
    assert [n for n, _ in plain.named_parameters() if n.endswith("bias") and "bn" not in n][
        -1
    ] == "head.2.bias"


@pytest.mark.parametrize(
    "entry",
    [{"preset": ["paper"]}, {"preset": "paper", "decode": "fresh"}, {"bias": "faulty"}, "paper", {1: 2}],
)
def test_a_checkpoint_with_a_bad_protocol_entry_is_refused_in_one_line(tmp_path, entry) -> None:
    from mcel_search.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model = create_model("small_cnn", bits=4, image_size=8)
    path = save_checkpoint(tmp_path / "c.pt", model, {"model": model.mcel_config, "protocol": entry})
    with pytest.raises(CheckpointError, match="records a protocol that is not valid"):
        load_checkpoint(path)
