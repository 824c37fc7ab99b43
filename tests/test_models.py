import json

import pytest

torch = pytest.importorskip("torch")

from hdme.errors import HdmeError  # noqa: E402
from hdme.train.models import (  # noqa: E402
    MODEL_CONFIGS,
    count_flops,
    count_params,
    create_model,
    load_init_state,
    load_model,
    save_model,
)

# Each variant's topology at a width small enough to run in milliseconds.
SMALL = {
    "hdme-paper": {"stem_width": 8, "layer1": {"block": "bottleneck", "blocks": 1, "planes": 4},
                   "stages": [{"modules": 1, "blocks": 1, "widths": [4, 8]},
                              {"modules": 2, "blocks": 1, "widths": [4, 8, 16]},
                              {"modules": 2, "blocks": 1, "widths": [4, 8, 16, 32]}]},
    "hdme-w18": {"stem_width": 8, "layer1": {"block": "basic", "blocks": 1, "planes": 8},
                 "stages": [{"modules": 1, "blocks": 1, "widths": [4, 8]},
                            {"modules": 1, "blocks": 1, "widths": [4, 8, 16]}],
                 "head": {"skips": {"1": 4}, "widths": [6]}},
    "hdme-edge": {"stem_width": 8, "layer1": {"block": "basic", "blocks": 1, "planes": 8},
                  "stages": [{"modules": 1, "blocks": 1, "widths": [4, 8]},
                             {"modules": 1, "blocks": 1, "widths": [4, 8, 16]}],
                  "head": {"skips": {"1": 4, "2": 8}, "widths": [6, 4]}},
    "hdme-tiny": {},
}


def test_every_variant_has_a_small_topology_test():
    assert set(SMALL) == set(MODEL_CONFIGS)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("hw", [(37, 53), (32, 32), (48, 33)])
def test_forward_keeps_any_size_and_clamps_in_eval(name, hw):
    torch.manual_seed(0)
    model = create_model(name, **SMALL[name])
    with torch.no_grad():
        model.out.bias.fill_(0.5)  # push outputs over both clamp edges for some pixels
        model.out.weight.mul_(50.0)
    x = torch.rand(2, 3, *hw)
    model.train()
    raw = model(x)
    assert raw.shape == (2, 1, *hw)
    assert raw.min() < 0 or raw.max() > 1  # unclamped while training
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 1, *hw)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert model.multiple == model.stem_stride * 2 ** (len(model.config["stages"][-1]["widths"]) - 1)


def test_odd_sizes_are_reflect_padded_then_cropped():
    torch.manual_seed(0)
    model = create_model("hdme-tiny").eval()
    x = torch.rand(1, 3, 37, 53)
    m = model.multiple
    padded = torch.nn.functional.pad(x, (0, -53 % m, 0, -37 % m), mode="reflect")
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :37, :53], atol=1e-6)
        assert not torch.allclose(model(x), model(x.flip(-1)).flip(-1), atol=1e-3)


def test_paper_model_has_the_papers_size():
    model = create_model("hdme-paper")
    assert abs(count_params(model) - 63.6e6) < 0.1e6
    assert model.multiple == 8 and model.stem_stride == 1


def test_edge_model_is_light_and_full_resolution():
    model = create_model("hdme-edge")
    gflop = count_flops(model, 256, 256) / 1e9
    assert gflop <= 2.0
    assert count_flops(model, 512, 512) == pytest.approx(4 * gflop * 1e9, rel=0.01)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 64, 96)).shape == (1, 1, 64, 96)


def test_flop_counter_agrees_with_torch():
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("hdme-tiny").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert count_flops(model, 64, 64) == counter.get_total_flops()


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = create_model("hdme-tiny").eval()
    path = save_model(model, tmp_path / "m.safetensors", {"steps": 7})
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["model"] == "hdme-tiny" and card["steps"] == 7 and card["config"] == model.config
    assert "hdme_version" in card
    loaded = load_model(path)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(HdmeError, match="no such weights"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "bad.json").write_text(json.dumps({"model": "hdme-tiny", "config": MODEL_CONFIGS["hdme-tiny"]}))
    with pytest.raises(HdmeError, match="safetensors"):
        load_model(tmp_path / "bad.safetensors")
    with pytest.raises(HdmeError, match="unknown model"):
        create_model("hdme-nope")
    with pytest.raises(HdmeError, match=r"photo.jpg: not network weights \(a .safetensors file or a shipped model name\)"):
        load_model(tmp_path / "photo.jpg")


def test_global_context_starts_as_identity_and_warm_starts_from_weights_without_it(tmp_path):
    torch.manual_seed(2)
    plain = create_model("hdme-edge", **SMALL["hdme-edge"]).eval()
    with torch.no_grad():
        plain.out.bias.fill_(0.5)  # a fresh network's σ clamps to 0 everywhere
    path = save_model(plain, tmp_path / "plain.safetensors")
    with_context = create_model("hdme-edge", global_context=8, **SMALL["hdme-edge"]).eval()
    assert load_init_state(with_context, path) == ["context"]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(with_context(x), plain(x))
        torch.nn.init.normal_(with_context.context.expand.weight)
        assert not torch.equal(with_context(x), plain(x))

    # Round trip through its own card, and no silent partial loads the other way or across widths.
    saved = save_model(with_context, tmp_path / "context.safetensors")
    with torch.no_grad():
        assert torch.equal(load_model(saved)(x), with_context(x))
    with pytest.raises(HdmeError, match="do not fit"):
        load_init_state(create_model("hdme-edge", **SMALL["hdme-edge"]), saved)
    with pytest.raises(HdmeError, match="do not fit"):
        load_init_state(create_model("hdme-tiny"), path)
    with pytest.raises(HdmeError, match="unknown config keys"):
        create_model("hdme-edge", global_contex=8)


def test_blocks_appended_to_branches_start_as_identity_and_grow_a_deeper_model_from_weights(tmp_path):
    torch.manual_seed(3)
    shallow = create_model("hdme-edge", **SMALL["hdme-edge"]).eval()
    with torch.no_grad():
        shallow.out.bias.fill_(0.5)
    path = save_model(shallow, tmp_path / "shallow.safetensors")
    stages = [dict(stage) for stage in SMALL["hdme-edge"]["stages"]]
    stages[-1]["blocks"] += 2
    deep = create_model("hdme-edge", **{**SMALL["hdme-edge"], "stages": stages}).eval()
    grown = load_init_state(deep, path)
    assert grown == [f"stages.1.0.branches.{b}.{k}" for b in range(3) for k in (1, 2)]
    assert count_params(deep) > count_params(shallow)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(deep(x), shallow(x))
        torch.nn.init.normal_(deep.stages[1][0].branches[0][2].conv2[1].weight)
        assert not torch.equal(deep(x), shallow(x))

    # The added blocks may learn at a rate of their own; everything else keeps the run's.
    from hdme.train.trainer import param_groups

    slow, fast = param_groups(deep, grown, 1e-4, 20.0)
    assert (slow["lr"], fast["lr"]) == (1e-4, 2e-3)
    assert len(fast["params"]) == 6 * len(grown)  # two convolutions and two BatchNorms (scale, shift) each
    assert len(slow["params"]) + len(fast["params"]) == len(list(deep.parameters()))
    assert len(param_groups(deep, grown, 1e-4, 1.0)) == len(param_groups(shallow, [], 1e-4, 20.0)) == 1

    # A shallower model does not load the deeper weights, nor one deeper in another stage only.
    saved = save_model(deep, tmp_path / "deep.safetensors")
    with pytest.raises(HdmeError, match="do not fit"):
        load_init_state(create_model("hdme-edge", **SMALL["hdme-edge"]), saved)
    stages[-1]["blocks"] = 1
    stages[0]["blocks"] += 1
    with pytest.raises(HdmeError, match="do not fit"):
        load_init_state(create_model("hdme-edge", **{**SMALL["hdme-edge"], "stages": stages}), saved)
